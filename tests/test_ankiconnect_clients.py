"""Real AnkiConnect clients' sessions, replayed call for call, then found on a phone.

Each replay sends what the client's source sends (action names, params, `multi`
nesting, version, the headers its HTTP stack adds) to the AnkiConnect port of the real
service, logged in to the local sync server; then a fresh collection synced from that
server must hold the effects: added notes and their media, deletes, deck moves, new
note types. Sources read (the fetch tool's snapshots):
- Obsidian_to_Anki (Pseudonium): src/anki.ts, src/files-manager.ts, main.ts
- asbplayer (killergerbah): common/anki/anki.ts, common/components/AnkiSettingsTab.tsx
- mpvacious (Ajatt-Tools): mpvacious/anki/ankiconnect.lua, platform/nix.lua (curl -d)
- Yomitan (yomidevs): ext/js/comm/anki-connect.js
"""

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from anki_server import download_collection, free_port, media_files, notes_in, seed_other_device
from test_ankiconnect import AUDIO, PICTURE, wait_for_port

pytestmark = pytest.mark.slow


class Wire:
    """One client's HTTP as its stack sends it: headers fixed, body JSON text."""

    def __init__(self, port, headers):
        self.port, self.headers = port, headers

    def send(self, request):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}",
                                     data=json.dumps(request).encode(), method="POST",
                                     headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as answer:
                assert answer.status == 200
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{error.code} for {request['action']}: {error.read()!r}")

    def invoke(self, action, params=None, version=6):
        """{action, version, params} as the client builds it; the result, or fail."""
        request = {"action": action, "version": version}
        if params is not None:
            request["params"] = params
        reply = self.send(request)
        assert reply["error"] is None, (action, reply)
        return reply["result"]


def start(make_service, sync_server, account, tmp_path, **settings):
    """ankisync with AnkiConnect on, logged in to an account that already holds the
    user's collection (one note from their phone), as a user's account does."""
    seed_other_device(tmp_path / "earlier", sync_server.url, account, "from the phone")
    port = free_port()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                           ANKISYNC_GOOGLE_API_KEY=None, **settings)
    wait_for_port(service, port)
    service.sync_login(account)
    # the user's collection arrives before the client starts (a change made before
    # this first full download would be replaced by the server's copy)
    assert Wire(port, {}).invoke("sync")["synced"] is True
    service.ac_port = port
    return service


def synced_phone(wire, sync_server, account, where):
    """Sync ankisync now (AnkiConnect `sync`), then a fresh collection from the server;
    the note the phone had put there first is still in it."""
    assert wire.invoke("sync")["synced"] is True
    phone = download_collection(where, sync_server.url, account, "pass")
    assert "from the phone" in {note["fields"].get("Front") for note in notes_in(phone)}
    return phone


# --- Obsidian_to_Anki -------------------------------------------------------------
# XMLHttpRequest from the Obsidian app: Origin app://obsidian.md, a text body; its
# README has users add app://obsidian.md to the add-on's webCorsOriginList.
OBSIDIAN = {"Origin": "app://obsidian.md", "Content-Type": "text/plain;charset=UTF-8"}


def obsidian_request(action, params=None):  # anki.ts request(): version 6, params {}
    return {"action": action, "version": 6, "params": params or {}}


def obsidian_multi(actions):
    return obsidian_request("multi", {"actions": actions})


def obsidian_note(front, back, deck, tags=()):  # note-interface.ts AnkiConnectNote
    return {"deckName": deck, "modelName": "Basic", "fields": {"Front": front, "Back": back},
            "options": {"allowDuplicate": False, "duplicateScope": "deck"},
            "tags": list(tags)}


def obsidian_scan(wire, files):
    """FileManager.requests_1 then requests_2 over files: each a dict with
    add (notes), ids (note ids already in the file), update ({id: fields}),
    delete (ids), media ([(name, path)]), deck, tags (removed then re-added).
    Returns the add results per file, as parse_requests_1 reads them."""
    assert wire.invoke("modelNames")  # scanVault: the connection check
    requests = [
        obsidian_multi([obsidian_multi([obsidian_request("addNote", {"note": note})
                                        for note in f["add"]]) for f in files]),
        obsidian_multi([obsidian_request("notesInfo", {"notes": f["ids"]}) for f in files]),
        obsidian_request("getTags"),
        obsidian_multi([obsidian_multi([
            obsidian_request("updateNoteFields", {"note": {"id": note_id, "fields": fields}})
            for note_id, fields in f["update"].items()]) for f in files]),
        obsidian_multi([obsidian_request("deleteNotes", {"notes": f["delete"]}) for f in files]),
        obsidian_multi([obsidian_request("storeMediaFile", {"filename": name, "path": path})
                        for f in files for name, path in f["media"]]),
    ]
    response = wire.invoke("multi", {"actions": requests})
    assert len(response) == 6 and all(part["error"] is None for part in response), response
    added = [[entry["result"] for entry in per_file["result"]]
             for per_file in response[0]["result"]]
    card_ids = [[card for info in per_file["result"] for card in info["cards"]]
                for per_file in response[1]["result"]]
    assert all(entry["error"] is None for entry in response[3]["result"])
    assert all(entry["error"] is None for entry in response[4]["result"])  # deletes
    assert all(entry["error"] is None for entry in response[5]["result"])  # media
    # requests_2: decks; then every tag of the collection cleared from the edited notes
    # and each one's own tags put back; its replies are never read, so a refusal here
    # is silent for the user: check them all
    all_tags = " ".join(response[2]["result"])
    second = wire.invoke("multi", {"actions": [
        obsidian_multi([obsidian_request("changeDeck", {"cards": cards, "deck": f["deck"]})
                        for f, cards in zip(files, card_ids)]),
        obsidian_multi([obsidian_request("removeTags", {"notes": f["ids"], "tags": all_tags})
                        for f in files]),
        obsidian_multi([obsidian_multi([
            obsidian_request("addTags", {"notes": [note_id], "tags": " ".join(f["tags"]) + " "})
            for note_id in f["ids"]]) for f in files]),
    ]})
    for part in second:
        assert part["error"] is None, second
        for entry in part["result"]:
            assert entry["error"] is None, second
    return added


def test_obsidian_to_anki_scans_reach_a_fresh_collection(make_service, account, sync_server,
                                                         tmp_path):
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "diagram.png").write_bytes(PICTURE)
    service = start(make_service, sync_server, account, tmp_path,
                    ANKISYNC_ANKICONNECT_ORIGINS="app://obsidian.md",
                    ANKISYNC_ANKICONNECT_PATHS=str(vault))
    wire = Wire(service.ac_port, OBSIDIAN)
    # onload/saveDefault: note types and their fields
    for model in wire.invoke("modelNames"):
        assert wire.invoke("modelFieldNames", {"modelName": model})

    # first scan: two files, three new notes, a picture by path
    biology = {"add": [obsidian_note("mitosis", 'cell division <img src="diagram.png">',
                                     "Obsidian::Biology", ["obsidian"]),
                       obsidian_note("meiosis", "halves chromosomes", "Obsidian::Biology",
                                     ["obsidian"])],
               "ids": [], "update": {}, "delete": [], "media": [("diagram.png",
                                                                 str(vault / "diagram.png"))],
               "deck": "Obsidian::Biology", "tags": ["obsidian"]}
    chemistry = {"add": [obsidian_note("osmosis", "water moves", "Obsidian::Chemistry")],
                 "ids": [], "update": {}, "delete": [], "media": [],
                 "deck": "Obsidian::Chemistry", "tags": []}
    for deck in ("Obsidian::Biology", "Obsidian::Chemistry"):  # the user made them in Anki
        wire.invoke("createDeck", {"deck": deck})
    [[mitosis, meiosis], [osmosis]] = obsidian_scan(wire, [biology, chemistry])
    assert all(isinstance(note_id, int) for note_id in (mitosis, meiosis, osmosis))

    # the user edits the vault: meiosis deleted, osmosis moved to the biology file,
    # mitosis's answer changed
    biology.update(add=[], ids=[mitosis, osmosis], update={mitosis: {"Back": "two cells"}},
                   delete=[meiosis], media=[])
    chemistry.update(add=[], ids=[], tags=[])
    obsidian_scan(wire, [biology, chemistry])

    phone = synced_phone(wire, sync_server, account, tmp_path / "phone")
    try:
        on_phone = {note["fields"]["Front"]: note for note in notes_in(phone)}
        assert "meiosis" not in on_phone  # the delete arrived
        assert on_phone["osmosis"]["deck"] == "Obsidian::Biology"  # the deck move arrived
        assert on_phone["mitosis"]["fields"]["Back"] == "two cells"
        assert on_phone["mitosis"]["tags"] == ["obsidian"]
        assert "diagram.png" in media_files(phone)
    finally:
        phone.close()


# --- asbplayer ----------------------------------------------------------------------
# The extension's fetch(): Origin chrome-extension://ID, body JSON.stringify'd as text;
# let in by the add-on's default list (http://localhost allows extensions).
ASBPLAYER = {"Origin": "chrome-extension://hkledmpjpaehamkiehglnbelcpdflcab",
             "Content-Type": "text/plain;charset=UTF-8"}
SENTENCE_CARD = {  # AnkiSettingsTab.tsx defaultNoteType
    "modelName": "Sentence Card",
    "inOrderFields": ["Sentence", "Word", "Definition", "Image", "Audio", "Source", "URL"],
    "css": ".card {\n  font-family: arial;\n  font-size: 20px;\n  text-align: center;\n}",
    "cardTemplates": [{"Front": '<div class="front">{{Sentence}}</div>',
                       "Back": '<div class="front">{{Sentence}}</div>\n<hr id=answer>\n'
                               "{{Definition}}\n<p/>\n<div class=\"image\">\n{{Image}}\n</div>"
                               "\n<p/>\n{{Audio}}\n<p/>\n{{Source}}\n<p/>\n{{URL}}"}],
}


def asbplayer_connect(wire):
    """requestAnkiConnect(): version, decks, note types, every note type's fields."""
    assert wire.invoke("version") == 6
    decks, models = wire.invoke("deckNames"), wire.invoke("modelNames")
    for model in models:
        wire.invoke("modelFieldNames", {"modelName": model})
    return decks, models


def test_asbplayer_setup_and_mining_reach_a_fresh_collection(make_service, account,
                                                             sync_server, tmp_path):
    """Needs createModel (ankiconnect/models.py) and notesModTime (ankiconnect/notes.py)."""
    service = start(make_service, sync_server, account, tmp_path)
    wire = Wire(service.ac_port, ASBPLAYER)
    asbplayer_connect(wire)
    # the settings tutorial: "create default deck", then "create default note type"
    wire.invoke("createDeck", {"deck": "Sentences"})
    asbplayer_connect(wire)
    wire.invoke("createModel", SENTENCE_CARD)
    decks, models = asbplayer_connect(wire)
    assert "Sentences" in decks and "Sentence Card" in models
    assert wire.invoke("modelFieldNames", {"modelName": "Sentence Card"}) == \
        SENTENCE_CARD["inOrderFields"]

    # export(), mode default: a webm clip goes in by storeMediaFile first
    clip = wire.invoke("storeMediaFile", {"filename": "asbp_clip_1.webm",
                                          "data": base64.b64encode(b"webm bytes").decode(),
                                          "deleteExisting": False})
    assert clip == "asbp_clip_1.webm"
    note_id = wire.invoke("addNote", {"note": {
        "deckName": "Sentences", "modelName": "Sentence Card", "tags": ["asbplayer"],
        "options": {"allowDuplicate": True, "duplicateScope": "deck",
                    "duplicateScopeOptions": {"deckName": "Sentences", "checkChildren": False}},
        "audio": {"filename": "asbp_line_1.mp3", "data": base64.b64encode(AUDIO).decode(),
                  "fields": ["Audio"]},
        "fields": {"Sentence": "猫が好きです", "Word": "猫", "Definition": "cat",
                   "Image": f'<video autoplay loop muted playsinline src="{clip}"></video>',
                   "Source": "episode 1", "URL": "https://example.com/watch"}}})
    assert isinstance(note_id, int)

    # export(), mode updateLast: the last note added today gets the next line's picture
    recent = wire.invoke("findNotes", {"query": "added:1"})
    last = sorted(recent)[-1]
    [info] = wire.invoke("notesInfo", {"notes": [last]})
    assert info["noteId"] == last == note_id
    wire.invoke("updateNoteFields", {"note": {
        "deckName": "Sentences", "modelName": "Sentence Card", "tags": ["asbplayer"],
        "options": {"allowDuplicate": True, "duplicateScope": "deck"}, "id": last,
        "picture": {"filename": "asbp_frame_1.jpeg", "data": base64.b64encode(PICTURE).decode(),
                    "fields": ["Image"]},
        "fields": {"Sentence": "猫が好きです<br>猫が大好きです"}}})
    wire.invoke("addTags", {"notes": [last], "tags": "asbplayer"})

    # word tracking (dictionary-db.ts): cards and notes with the word, and their mod times
    cards = wire.invoke("findCards", {"query": '"Word:猫"'})
    assert cards
    assert [entry["cardId"] for entry in wire.invoke("cardsModTime", {"cards": cards})] == cards
    assert wire.invoke("areSuspended", {"cards": cards}) == [False] * len(cards)
    notes = wire.invoke("findNotes", {"query": '"Word:猫"'})
    assert [info["noteId"] for info in wire.invoke("notesInfo", {"notes": notes})] == notes
    assert [entry["noteId"] for entry in wire.invoke("notesModTime", {"notes": notes})] == notes

    phone = synced_phone(wire, sync_server, account, tmp_path / "phone")
    try:
        model = phone.models.by_name("Sentence Card")
        assert model is not None  # the new note type arrived
        assert [field["name"] for field in model["flds"]] == SENTENCE_CARD["inOrderFields"]
        [note] = [n for n in notes_in(phone) if n["notetype"] == "Sentence Card"]
        assert note["deck"] == "Sentences"
        assert note["fields"]["Audio"] == "[sound:asbp_line_1.mp3]"
        assert note["fields"]["Image"].endswith('<img src="asbp_frame_1.jpeg">')
        assert note["fields"]["Sentence"] == "猫が好きです<br>猫が大好きです"
        assert {"asbp_clip_1.webm", "asbp_line_1.mp3", "asbp_frame_1.jpeg"} <= media_files(phone)
    finally:
        phone.close()


# --- mpvacious -------------------------------------------------------------------------
# curl -s URL -X POST -d JSON: a form content type, no Origin.
MPVACIOUS = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "curl/8.5.0"}


def test_mpvacious_mining_reaches_a_fresh_collection(make_service, account, sync_server,
                                                     tmp_path):
    """Needs findModelsByName (ankiconnect/models.py)."""
    service = start(make_service, sync_server, account, tmp_path)
    wire = Wire(service.ac_port, MPVACIOUS)
    # start-up: create_deck (changeDeck of no cards makes the deck), the media folder,
    # where mpvacious's encoder writes the clip and the snapshot itself
    wire.invoke("changeDeck", {"cards": [], "deck": "Japanese::Mining"})
    media_dir = Path(wire.invoke("getMediaDirPath"))
    assert media_dir.is_dir()
    (media_dir / "mpv_line_00_01_02.ogg").write_bytes(b"OggS fake audio")
    (media_dir / "mpv_snap_00_01_02.avif").write_bytes(b"fake avif")

    # export: the first field's name, then addNote, then the browser on the new note
    [model] = wire.invoke("findModelsByName", {"modelNames": ["Basic"]})
    first = [field["name"] for field in model["flds"] if field["ord"] == 0][0]
    assert first == "Front"
    note_id = wire.invoke("addNote", {"note": {
        "deckName": "Japanese::Mining", "modelName": "Basic",
        "fields": {first: "日本語を勉強する", "Back": "[sound:mpv_line_00_01_02.ogg]"},
        "options": {"allowDuplicate": False, "duplicateScope": "deck"}, "tags": ["mpvacious"]}})
    wire.invoke("guiBrowse", {"query": f"nid:{note_id}"})

    # update_last_note: notes added today, the last one's fields, media appended
    today = wire.invoke("findNotes", {"query": "added:1"})
    assert note_id in today
    [info] = wire.invoke("notesInfo", {"notes": [note_id]})
    back = info["fields"]["Back"]["value"]
    wire.invoke("guiBrowse", {"query": "nid:1"})
    wire.invoke("updateNoteFields", {"note": {"id": note_id, "fields": {
        "Back": back + '<img alt="snapshot" src="mpv_snap_00_01_02.avif">'}}})
    wire.invoke("addTags", {"notes": [note_id], "tags": "mpvacious_updated"})

    phone = synced_phone(wire, sync_server, account, tmp_path / "phone")
    try:
        assert "Japanese::Mining" in phone.decks.all_names()
        [note] = [n for n in notes_in(phone) if n["fields"]["Front"] == "日本語を勉強する"]
        assert note["deck"] == "Japanese::Mining"
        assert "mpv_snap_00_01_02.avif" in note["fields"]["Back"]
        assert sorted(note["tags"]) == ["mpvacious", "mpvacious_updated"]
        assert {"mpv_line_00_01_02.ogg", "mpv_snap_00_01_02.avif"} <= media_files(phone)
    finally:
        phone.close()


# --- Yomitan -----------------------------------------------------------------------------
# fetch() with mode cors and Content-Type application/json from the extension; version 2,
# so successes are bare results and errors {"result": null, "error"}.
YOMITAN = {"Origin": "chrome-extension://likgccmbimhjbgkjambclfkhldnlhbnn",
           "Content-Type": "application/json"}


def test_yomitan_lookup_and_add_reach_a_fresh_collection(make_service, account, sync_server,
                                                         tmp_path):
    service = start(make_service, sync_server, account, tmp_path)
    wire = Wire(service.ac_port, YOMITAN)

    def invoke(action, params):
        reply = wire.send({"action": action, "params": params, "version": 2})
        assert not (isinstance(reply, dict) and "error" in reply), (action, reply)
        return reply

    assert invoke("version", {}) == 6
    assert "Default" in invoke("deckNames", {})
    assert invoke("modelFieldNames", {"modelName": "Basic"}) == ["Front", "Back"]
    note = {"deckName": "Default", "modelName": "Basic",
            "fields": {"Front": "辞書", "Back": "dictionary"}, "tags": ["yomitan"],
            "options": {"allowDuplicate": False, "duplicateScope": "collection",
                        "duplicateScopeOptions": {"deckName": None, "checkChildren": False,
                                                  "checkAllModels": False}}}
    assert invoke("apiReflect", {"scopes": ["actions"], "actions": ["addNote"]}) == {
        "scopes": ["actions"], "actions": ["addNote"]}
    # the popup asks whether each term can be added (multi, each with its version)
    [can] = invoke("multi", {"actions": [
        {"action": "canAddNotesWithErrorDetail", "params": {"notes": [note]}, "version": 2}]})
    assert can == [{"canAdd": True}]
    assert invoke("storeMediaFile", {"filename": "yomitan_jisho.mp3",
                                     "data": base64.b64encode(AUDIO).decode()}) == \
        "yomitan_jisho.mp3"
    note_id = invoke("addNote", {"note": {**note, "fields": {
        "Front": "辞書", "Back": "dictionary [sound:yomitan_jisho.mp3]"}}})
    assert invoke("findNotes", {"query": '"front:辞書"'}) == [note_id]
    cards = invoke("findCards", {"query": f"nid:{note_id}"})
    assert [card["note"] for card in invoke("cardsInfo", {"cards": cards})] == [note_id]
    # Yomitan's "force sync" sends {version} as sync's params; the add-on's sync() takes
    # none, so the add-on (and ankisync, on its wire) names the unknown parameter
    reply = wire.send({"action": "sync", "params": {"version": 2}, "version": 2})
    assert reply == {"result": None,
                     "error": "AnkiConnect.sync() got an unexpected keyword argument 'version'"}

    phone = synced_phone(wire, sync_server, account, tmp_path / "phone")
    try:
        [on_phone] = [n for n in notes_in(phone) if n["fields"]["Front"] == "辞書"]
        assert on_phone["tags"] == ["yomitan"]
        assert "yomitan_jisho.mp3" in media_files(phone)
    finally:
        phone.close()


# --- a new, empty sync account ------------------------------------------------------


def test_a_deck_made_on_a_new_account_before_any_note_reaches_the_server(
        make_service, account, sync_server, tmp_path):
    """A new self-hosted account: log in, then a client's setup makes its deck first
    (mpvacious's create_deck, asbplayer's createDeck/createModel) and syncs."""
    port = free_port()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                           ANKISYNC_GOOGLE_API_KEY=None)
    wait_for_port(service, port)
    service.sync_login(account)
    wire = Wire(port, MPVACIOUS)
    assert wire.invoke("sync")["synced"] is True
    wire.invoke("changeDeck", {"cards": [], "deck": "Japanese::Mining"})
    assert "Japanese::Mining" in wire.invoke("deckNames")
    assert wire.invoke("sync")["synced"] is True
    assert "Japanese::Mining" in wire.invoke("deckNames")
    phone = download_collection(tmp_path / "phone", sync_server.url, account, "pass")
    try:
        assert "Japanese::Mining" in phone.decks.all_names()
    finally:
        phone.close()
