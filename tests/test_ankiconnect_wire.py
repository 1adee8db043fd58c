"""AnkiConnect's wire as the add-on has it now: the empty request, the schema errors,
unknown parameters, the origin rule, suspend on a missing card, addNotes all or none.

One service with no key (the tests run as the user running ankisync, so they are let
in as Yomitan in the user's browser is) and the default origins.
"""

import json
import socket

import pytest

from anki_server import free_port
from browser import Page, chromium
from service import Service
from test_ankiconnect import basic, call, wait_for_port

# What jsonschema's str(ValidationError) gives for the add-on's request schema: the
# add-on sends this text as "error".
SCHEMA = """\
    {'properties': {'action': {'minLength': 1, 'type': 'string'},
                    'params': {'type': 'object'},
                    'version': {'type': 'integer'}},
     'required': ['action'],
     'type': 'object'}"""


@pytest.fixture(scope="module")
def open_door(tmp_path_factory):
    port = free_port()
    service = Service(tmp_path_factory.mktemp("wire") / "svc",
                      ANKISYNC_SYNC_ENDPOINT=None, ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}").start()
    wait_for_port(service, port)
    service.ac_port = port
    yield service
    service.kill()


def ask(service, action, **params):
    status, _, body = call(service.ac_port, action, **params)
    assert status == 200, body
    return body


def raw_exchange(port, request):
    """The exact bytes of one HTTP exchange."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = [line for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    return head.decode(), body


def test_empty_request_answers_the_api_version_as_json(open_door):
    for method in (b"GET", b"POST"):
        head, body = raw_exchange(open_door.ac_port, method + b" / HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 0\r\n\r\n")
        assert head.startswith("HTTP/1.") and " 200 " in head.split("\r\n")[0]
        assert "Content-Type: application/json" in head
        assert body == b'{"apiVersion": "AnkiConnect v.6"}'
        assert json.loads(body) == {"apiVersion": "AnkiConnect v.6"}


@pytest.mark.parametrize("raw, error", [
    (b"{}", "'action' is a required property\n\nFailed validating 'required' in schema:\n"
     + SCHEMA + "\n\nOn instance:\n    {}"),
    (b'{"action": 1}', "1 is not of type 'string'\n\nFailed validating 'type' in"
     " schema['properties']['action']:\n    {'minLength': 1, 'type': 'string'}\n\n"
     "On instance['action']:\n    1"),
    (b"1.2", "1.2 is not of type 'object'\n\nFailed validating 'type' in schema:\n"
     + SCHEMA + "\n\nOn instance:\n    1.2"),
    (b'["deckNames"]', "['deckNames'] is not of type 'object'\n\nFailed validating 'type'"
     " in schema:\n" + SCHEMA + "\n\nOn instance:\n    ['deckNames']"),
    (b'{"action": ""}', "'' should be non-empty\n\nFailed validating 'minLength' in"
     " schema['properties']['action']:\n    {'minLength': 1, 'type': 'string'}\n\n"
     "On instance['action']:\n    ''"),
    (b'{"action": "deckNames", "version": "6"}', "'6' is not of type 'integer'\n\n"
     "Failed validating 'type' in schema['properties']['version']:\n    {'type': 'integer'}"
     "\n\nOn instance['version']:\n    '6'"),
    (b'{"action": "deckNames", "params": null}', "None is not of type 'object'\n\n"
     "Failed validating 'type' in schema['properties']['params']:\n    {'type': 'object'}"
     "\n\nOn instance['params']:\n    None"),
    (b"{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"", None),
])
def test_malformed_requests_get_the_add_ons_schema_errors(open_door, raw, error):
    status, _, body = call(open_door.ac_port, raw=raw)
    assert status == 200
    if error is None:
        assert body == {"apiVersion": "AnkiConnect v.6"}
    else:
        assert body == {"result": None, "error": error}


def test_refused_origin_gets_403_for_malformed_requests_too(open_door):
    for raw in (b"{}", b"{not json", b""):
        status, _, body = call(open_door.ac_port, raw=raw, origin="https://evil.example")
        assert (status, body) == (403, b"")


def test_unknown_or_misspelt_parameter_is_named(open_door):
    error = ask(open_door, "storeMediaFile", filename="x.mp3", dat="aGk=")["error"]
    assert error == "AnkiConnect.storeMediaFile() got an unexpected keyword argument 'dat'"
    error = ask(open_door, "storeMediaFile", filename="y.mp3", data="aGk=",
                deleteExistng=False)["error"]
    assert error == ("AnkiConnect.storeMediaFile() got an unexpected keyword argument"
                     " 'deleteExistng'")
    # nothing was stored by either refused call
    assert ask(open_door, "retrieveMediaFile", filename="y.mp3")["result"] is False
    assert ask(open_door, "deckNames", deck="x")["error"] == (
        "AnkiConnect.deckNames() got an unexpected keyword argument 'deck'")
    # inside multi, each action is checked on its own
    results = ask(open_door, "multi", actions=[
        {"action": "deckNames", "version": 6},
        {"action": "findNotes", "version": 6, "params": {"querry": "deck:Default"}}])["result"]
    assert results[0]["error"] is None
    assert results[1] == {"result": None, "error": "AnkiConnect.findNotes() got an unexpected"
                                                   " keyword argument 'querry'"}
    # the right names still work
    assert ask(open_door, "storeMediaFile", filename="z.mp3", data="aGk=",
               deleteExisting=False) == {"result": "z.mp3", "error": None}


@pytest.mark.parametrize("origin, allowed", [
    (None, True),
    ("http://localhost", True),
    ("http://127.0.0.1", True),
    ("https://127.0.0.1", True),
    ("http://127.0.0.1:3000", True),
    ("chrome-extension://abcdefghijklmnop", True),
    ("moz-extension://1234-5678", True),
    ("safari-web-extension://ABCD-1234", True),
    ("http://localhost:3000", False),
    ("https://localhost", False),
    ("https://127.0.0.1:8443", False),
    ("http://127.0.0.1.evil.example", False),
    ("app://obsidian.md", False),
    ("https://evil.example", False),
    ("null", False),
])
def test_origin_rule_is_the_add_ons(open_door, origin, allowed):
    status, headers, body = call(open_door.ac_port, "version", origin=origin)
    if allowed:
        assert status == 200 and body == {"result": 6, "error": None}
        assert headers["Access-Control-Allow-Origin"] == (origin or "http://localhost")
    else:
        assert (status, body) == (403, b"")
        assert headers["Access-Control-Allow-Origin"] == "http://localhost"
        # it may still ask, and read its answer
        status, headers, body = call(open_door.ac_port, "requestPermission", origin=origin)
        assert status == 200 and body["result"] == {"permission": "denied"}
        assert headers["Access-Control-Allow-Origin"] == origin


def test_an_origin_added_to_the_list_is_let_in(tmp_path):
    port = free_port()
    service = Service(tmp_path / "svc", ANKISYNC_SYNC_ENDPOINT=None, ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                      ANKISYNC_ANKICONNECT_ORIGINS="app://obsidian.md,https://localhost").start()
    try:
        wait_for_port(service, port)
        for origin in ("app://obsidian.md", "https://localhost"):
            status, headers, body = call(port, "version", origin=origin)
            assert status == 200 and body["result"] == 6
            assert headers["Access-Control-Allow-Origin"] == origin
        # without http://localhost in the list, neither 127.0.0.1 pages nor extensions
        for origin in ("http://127.0.0.1:3000", "chrome-extension://abcdef"):
            assert call(port, "version", origin=origin)[0] == 403
    finally:
        service.kill()


def test_suspend_unknown_card_names_it(open_door):
    note_id = ask(open_door, "addNote", note=basic("wire-suspend"))["result"]
    [card_id] = ask(open_door, "findCards", query=f"nid:{note_id}")["result"]
    for action in ("suspend", "unsuspend"):
        assert ask(open_door, action, cards=[card_id, 1234]) == {
            "result": None, "error": "Card was not found: 1234"}
    # the known card was left alone by the refused call
    assert ask(open_door, "suspended", card=card_id)["result"] is False


def test_add_notes_is_all_or_none(open_door):
    ask(open_door, "addNote", note=basic("wire-existing"))
    batch = [basic("wire-batch-1"), basic("wire-batch-2", model="Missing"),
             basic("wire-batch-1"), basic("wire-existing"), basic("wire-batch-3")]
    body = ask(open_door, "addNotes", notes=batch)
    assert body == {"result": None, "error": str([
        "model was not found: Missing", "cannot create note because it is a duplicate",
        "cannot create note because it is a duplicate"])}
    assert ask(open_door, "findNotes", query="Front:wire-batch-*")["result"] == []
    # a good batch is added whole, in order
    ids = ask(open_door, "addNotes", notes=[basic("wire-batch-1"), basic("wire-batch-3")])["result"]
    assert len(ids) == 2 and all(isinstance(note_id, int) for note_id in ids)
    info = ask(open_door, "notesInfo", notes=ids)["result"]
    assert [note["fields"]["Front"]["value"] for note in info] == ["wire-batch-1", "wire-batch-3"]
    # duplicates within one batch are allowed when the notes say so
    twins = [basic("wire-twin", options={"allowDuplicate": True})] * 2
    assert len(ask(open_door, "addNotes", notes=twins)["result"]) == 2


@pytest.mark.slow  # a real browser
def test_a_real_browser_applies_the_origin_rule(open_door):
    """Chromium, the user's own browser: a page of http://127.0.0.1:PORT reads
    AnkiConnect's answer; a page of http://localhost:PORT is stopped at the preflight."""
    chromium()  # skips (or, in CI, fails) without a browser
    script = f"""
    try {{
      const answer = await fetch("http://127.0.0.1:{open_door.ac_port}/", {{method: "POST",
          headers: {{"content-type": "application/json"}},
          body: JSON.stringify({{action: "version", version: 6}})}});
      return {{status: answer.status, body: await answer.json()}};
    }} catch (error) {{
      return {{blocked: String(error)}};
    }}"""
    with Page(script, host="127.0.0.1") as page:
        assert page.run() == {"status": 200, "body": {"result": 6, "error": None}}
    with Page(script, host="localhost") as page:
        assert page.origin.startswith("http://localhost:")
        seen = page.run()
        assert "blocked" in seen, seen
