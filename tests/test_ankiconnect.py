"""AnkiConnect as its clients speak it: through the real worker, on its own port."""

import base64
import hashlib
import json
import sqlite3
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import config
from errors import ConfigError
import notes
from anki_server import (_accepts, download_collection, free_port, media_files, notes_in,
                         seed_other_device)
from helpers import wait_until
from service import Service

KEY = "test-ankiconnect-key"
AUDIO = b"ID3\x03\x00\x00\x00\x00\x00\x00fake mp3 bytes"
PICTURE = b"\x89PNG\r\n\x1a\nfake png bytes"


def call(port, action=None, version=6, key=None, origin=None, raw=None, method="POST",
         headers=None, **params):
    """(status, headers, body) of one AnkiConnect request; body parsed when it is JSON."""
    headers = dict(headers or {})
    if origin:
        headers["Origin"] = origin
    data = raw
    if action is not None:
        request = {"action": action, "version": version, "params": params}
        if version is None:
            del request["version"]
        if key is not None:
            request["key"] = key
        data = json.dumps(request).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:
            status, got, text = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, got, text = error.code, error.headers, error.read()
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    return status, got, body


def wait_for_port(service, port, timeout=30):
    wait_until(lambda: _accepts(port), lambda: "AnkiConnect to listen:\n" + service.logs(),
               timeout, every=0.05)


def start_with_ankiconnect(make, **settings):
    port = free_port()
    service = make(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                   ANKISYNC_GOOGLE_API_KEY=None, **settings)
    wait_for_port(service, port)
    service.ac_port = port
    return service


class Client:
    """An AnkiConnect client with a key, as Yomitan is once configured."""

    def __init__(self, port, key=None, version=6):
        self.port, self.key, self.version = port, key, version

    def raw(self, action, **params):
        status, _, body = call(self.port, action, self.version, self.key, **params)
        assert status == 200, body
        return body

    def __call__(self, action, **params):
        body = self.raw(action, **params)
        if self.version <= 4:
            return body
        assert body["error"] is None, body
        return body["result"]

    def error(self, action, **params):
        body = self.raw(action, **params)
        assert body["result"] is None, body
        return body["error"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, sync_server):
    """One service for the tests that need no sync: key set, AnkiConnect on."""
    port = free_port()
    root = tmp_path_factory.mktemp("keyed")
    (root / "media").mkdir()
    service = Service(root / "svc",
                      ANKISYNC_SYNC_ENDPOINT=sync_server.url, ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                      ANKISYNC_ANKICONNECT_KEY=KEY,
                      ANKISYNC_ANKICONNECT_PATHS=str(root / "media")).start()
    wait_for_port(service, port)
    service.ac_port, service.media_from = port, root / "media"
    yield service
    service.kill()


@pytest.fixture
def ac(keyed):
    client = Client(keyed.ac_port, KEY)
    client.media_from = keyed.media_from  # the folder in ANKISYNC_ANKICONNECT_PATHS
    return client


def basic(front, back="back", deck="Default", model="Basic", **extra):
    return {"deckName": deck, "modelName": model, "fields": {"Front": front, "Back": back},
            "tags": ["test"], **extra}


@pytest.fixture
def picture_server():
    """A local web server with one picture, as a dictionary site would have."""
    class Pictures(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/cat.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PICTURE)))
            self.end_headers()
            self.wfile.write(PICTURE)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pictures)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def yomitan_session(ac, word, pictures):
    """What Yomitan sends when a user looks a word up and adds it, with its checks."""
    assert ac("version") == 6
    assert ac("deckNames") == ["Default"] or "Default" in ac("deckNames")
    assert "Basic" in ac("modelNames")
    assert ac("modelFieldNames", modelName="Basic") == ["Front", "Back"]
    note = basic(word, f"meaning of {word}", options={
        "allowDuplicate": False, "duplicateScope": "collection",
        "duplicateScopeOptions": {"deckName": None, "checkChildren": False,
                                  "checkAllModels": False}})
    assert ac("canAddNotesWithErrorDetail", notes=[note]) == [{"canAdd": True}]
    assert ac("canAddNotes", notes=[note]) == [True]
    stored = ac("storeMediaFile", filename=f"yomitan_{word}.mp3",
                data=base64.b64encode(AUDIO).decode())
    assert stored == f"yomitan_{word}.mp3"
    audio_name = f"yomitan_audio_{word}.mp3"
    note_id = ac("addNote", note={
        **note,
        "audio": [{"filename": audio_name, "data": base64.b64encode(AUDIO).decode(),
                   "fields": ["Back"]}],
        "picture": [{"filename": f"{word}.png", "url": f"{pictures}/cat.png",
                     "fields": ["Back"]}],
    })
    assert isinstance(note_id, int)
    detail = ac("canAddNotesWithErrorDetail", notes=[note])
    assert detail == [{"canAdd": False, "error": "cannot create note because it is a duplicate"}]
    assert ac("findNotes", query=f"Front:{word}") == [note_id]
    [info] = ac("notesInfo", notes=[note_id])
    assert info["noteId"] == note_id and info["modelName"] == "Basic"
    assert info["tags"] == ["test"]
    assert info["fields"]["Front"] == {"value": word, "order": 0}
    assert info["fields"]["Back"]["value"] == (
        f'meaning of {word}[sound:{audio_name}]<img src="{word}.png">')
    assert ac("guiBrowse", query=f"nid:{note_id}") == info["cards"]
    assert "without Anki's window" in ac.error("guiEditNote", note=note_id)
    return note_id, [stored, audio_name, f"{word}.png"]


def test_yomitan_session_reaches_a_fresh_collection(make_service, account, sync_server,
                                                    picture_server, tmp_path):
    # the picture server is on this machine: allowed by name, as a user would
    service = start_with_ankiconnect(make_service, ANKISYNC_ANKICONNECT_URL_ALLOW="127.0.0.1")
    service.sync_login(account)
    added = {}
    for version, word in ((2, "ephemeral"), (6, "ubiquitous")):
        added[word] = yomitan_session(Client(service.ac_port, version=version), word,
                                      picture_server)
    ac = Client(service.ac_port)
    assert ac("sync")["synced"] is True

    col = download_collection(tmp_path / "phone", sync_server.url, account, "pass")
    try:
        fronts = {note["fields"]["Front"]: note for note in notes_in(col)}
        files = media_files(col)
    finally:
        col.close()
    for word, (note_id, names) in added.items():
        assert fronts[word]["deck"] == "Default"
        assert f"[sound:yomitan_audio_{word}.mp3]" in fronts[word]["fields"]["Back"]
        assert set(names) <= files
    with sqlite3.connect(config.db_path(config.load({"ANKISYNC_DATA_DIR": str(service.data_dir)}))) as conn:
        rows = conn.execute("SELECT id, synced_at FROM ankisync_jobs WHERE kind = 'ankiconnect'").fetchall()
    assert len(rows) == 2 and all(synced for _, synced in rows)
    guids = {note["guid"] for note in fronts.values()}
    assert {notes.note_guid(job_id) for job_id, _ in rows} <= guids


def test_version_4_and_multi_shapes(ac):
    assert Client(ac.port, KEY, version=4)("deckNames") == ac("deckNames")
    assert call(ac.port, "version", version=None, key=KEY)[2] == 6  # version defaults to 4
    results = ac("multi", actions=[{"action": "deckNames"},
                                   {"action": "version", "version": 6},
                                   {"action": "nope", "version": 6}])
    assert results == [ac("deckNames"), {"result": 6, "error": None},
                       {"result": None, "error": "unsupported action"}]
    assert ac("apiReflect", scopes=["actions"], actions=["addNote", "nope"]) == {
        "scopes": ["actions"], "actions": ["addNote"]}
    status, _, body = call(ac.port, raw=b"", method="GET")
    assert (status, body) == (200, {"apiVersion": "AnkiConnect v.6"})
    for raw in (b"{not json", b"[" * 100_000, b"[]"):
        status, _, body = call(ac.port, raw=raw)
        assert status == 200 and body["result"] is None and body["error"], raw[:10]


def test_exact_error_strings(ac):
    assert ac.error("nope") == "unsupported action"
    assert Client(ac.port, KEY, version=4).raw("nope") == {"result": None,
                                                           "error": "unsupported action"}
    assert ac.error("addNote", note=basic("x", model="No Such")) == "model was not found: No Such"
    assert ac.error("addNote", note=basic("x", deck="Nowhere")) == "deck was not found: Nowhere"
    assert ac.error("modelFieldNames", modelName="Gone") == "model was not found: Gone"
    assert ac.error("addNote", note=basic("")) == "cannot create note because it is empty"
    ac("addNote", note=basic("only-once"))
    assert ac.error("addNote", note=basic("only-once")) == \
        "cannot create note because it is a duplicate"
    cloze = {"deckName": "Default", "modelName": "Cloze", "fields": {"Text": "no cloze here"}}
    assert "cloze" in ac.error("addNote", note=cloze)
    assert ac.error("addNote", note={**basic("y"), "options": {"allowDuplicate": "yes"}}) == \
        'option parameter "allowDuplicate" must be boolean'
    # an unknown key is refused by name, as the add-on's Python call refuses it
    assert ac.error("deckNames", unexpected=1) == \
        "AnkiConnect.deckNames() got an unexpected keyword argument 'unexpected'"


def test_duplicate_rules_in_each_scope(ac):
    ac("createDeck", deck="Dup::Child")
    ac("createDeck", deck="Other")
    ac("addNote", note=basic("dupe-a", deck="Dup::Child"))

    def can_add(deck="Other", model="Basic", **options):
        note = basic("dupe-a", deck=deck, model=model, options=options)
        if model != "Basic":
            note["fields"] = {"Front": "dupe-a", "Back": "b"}
        return ac("canAddNotes", notes=[note])[0]

    assert can_add() is False                                    # collection scope
    assert can_add(duplicateScope="deck") is True                # another deck
    assert can_add(deck="Dup::Child", duplicateScope="deck") is False
    assert can_add(duplicateScope="deck", duplicateScopeOptions={"deckName": "Dup"}) is True
    assert can_add(duplicateScope="deck", duplicateScopeOptions={
        "deckName": "Dup", "checkChildren": True}) is False
    assert can_add(duplicateScope="deck", duplicateScopeOptions={"deckName": "Nope"}) is True
    assert can_add(model="Basic (and reversed card)") is True    # other note type
    assert can_add(model="Basic (and reversed card)",
                   duplicateScopeOptions={"checkAllModels": True}) is False
    assert isinstance(ac("addNote", note={**basic("dupe-a"),
                                          "options": {"allowDuplicate": True}}), int)


def test_add_notes_with_a_bad_note_in_the_middle(ac):
    # as the current add-on: the batch fails, every refusal listed, nothing added
    assert ac.error("addNotes", notes=[basic("batch-1"), basic("batch-2", model="Missing"),
                                       basic("batch-1"), basic("batch-3")]) == str(
        ["model was not found: Missing", "cannot create note because it is a duplicate"])
    assert ac("findNotes", query="Front:batch-*") == []


def test_media_store_retrieve_and_skip_hash(ac):
    data = base64.b64encode(AUDIO).decode()
    assert ac("storeMediaFile", filename="same.mp3", data=data) == "same.mp3"
    # deleteExisting (the default) replaces; skipHash of the same bytes skips
    assert ac("storeMediaFile", filename="same.mp3", data=base64.b64encode(b"new").decode()) \
        == "same.mp3"
    assert ac("storeMediaFile", filename="same.mp3", data=data,
              skipHash=hashlib.md5(AUDIO).hexdigest()) is None
    assert ac("retrieveMediaFile", filename="same.mp3") == base64.b64encode(b"new").decode()
    local = ac.media_from / "local.png"
    local.write_bytes(PICTURE)
    assert ac("storeMediaFile", filename="local.png", path=str(local)) == "local.png"
    assert ac("retrieveMediaFile", filename="missing.png") is False
    assert {"same.mp3", "local.png"} <= set(ac("getMediaFilesNames", pattern="*"))
    assert ac.error("storeMediaFile", filename="x.mp3") == \
        'You must provide a "data", "path", or "url" field.'


def test_update_tags_cards_and_suspend(ac):
    note_id = ac("addNote", note=basic("to-update"))
    ac("updateNote", note={"id": note_id, "fields": {"Back": "changed"}, "tags": ["new"]})
    ac("addTags", notes=[note_id], tags="extra")
    [info] = ac("notesInfo", notes=[note_id])
    assert info["fields"]["Back"]["value"] == "changed"
    assert sorted(info["tags"]) == ["extra", "new"]
    assert "extra" in ac("getTags")
    [card] = ac("cardsInfo", cards=info["cards"])
    assert card["note"] == note_id and card["deckName"] == "Default"
    assert ac("findCards", query=f"nid:{note_id}") == info["cards"]
    assert ac("suspend", cards=info["cards"]) is True
    assert ac("suspend", cards=info["cards"]) is False
    assert ac("notesInfo", notes=[1]) == [{}]
    assert ac.error("updateNote", note={"id": note_id}) == \
        'Must provide a "fields" or "tags" property.'


def test_key_and_cors_refusals(ac):
    port = ac.port
    assert call(port, "deckNames")[2] == {"result": None,
                                          "error": "valid api key must be provided"}
    assert call(port, "deckNames", key="wrong")[2]["error"] == "valid api key must be provided"
    granted = call(port, "requestPermission", origin="chrome-extension://abcdef")[2]
    assert granted["result"] == {"permission": "granted", "requireApikey": True, "version": 6}

    status, headers, body = call(port, "deckNames", key=KEY, origin="https://evil.example")
    assert (status, body) == (403, b"")
    assert headers["Access-Control-Allow-Origin"] != "https://evil.example"
    status, headers, body = call(port, "requestPermission", origin="https://evil.example")
    assert status == 200 and body["result"] == {"permission": "denied"}

    for origin in ("chrome-extension://abcdef", "moz-extension://1234-5678",
                   "http://localhost", "http://127.0.0.1:3000"):
        status, headers, body = call(port, "version", key=KEY, origin=origin)
        assert status == 200 and body["result"] == 6, origin
        assert headers["Access-Control-Allow-Origin"] == origin

    asks = {"Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
            "Access-Control-Request-Private-Network": "true"}
    status, headers, _ = call(port, method="OPTIONS", origin="chrome-extension://abcdef",
                              headers=asks)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "chrome-extension://abcdef"
    assert headers["Access-Control-Allow-Private-Network"] == "true"
    status, headers, _ = call(port, method="OPTIONS", origin="https://evil.example",
                              headers=asks)
    assert headers["Access-Control-Allow-Origin"] != "https://evil.example"
    assert headers["Access-Control-Allow-Private-Network"] is None


def test_note_added_before_login_survives_a_full_download(make_service, account, sync_server,
                                                          tmp_path):
    # another device already put notes on the server
    seed_other_device(tmp_path / "other", sync_server.url, account, "from the phone")

    service = start_with_ankiconnect(make_service)
    ac = Client(service.ac_port)
    ac("addNote", note=basic("added offline"))
    service.sync_login(account)  # queues a sync of its own: it may do the download first
    assert ac("sync")["outcome"] in ("downloaded", "no_changes")
    assert "re-applied after full download" in service.logs()
    assert len(ac("findNotes", query="deck:Default")) == 2

    col = download_collection(tmp_path / "fresh", sync_server.url, account, "pass")
    try:
        fronts = sorted(note["fields"]["Front"] for note in notes_in(col))
    finally:
        col.close()
    assert fronts == ["added offline", "from the phone"]


def test_start_refuses_open_listen_without_key():
    with pytest.raises(ConfigError, match="ANKISYNC_ANKICONNECT_KEY"):
        config.load({"ANKISYNC_DATA_DIR": "/nonexistent",
                     "ANKISYNC_ANKICONNECT_LISTEN": "0.0.0.0:8765"})
    strong = "k3y-Of-Sixteen-Chars"
    assert config.load({"ANKISYNC_DATA_DIR": "/nonexistent", "ANKISYNC_ANKICONNECT_KEY": strong,
                        "ANKISYNC_ANKICONNECT_LISTEN": "0.0.0.0:8765"}).ankiconnect_key == strong
