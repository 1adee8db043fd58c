"""The OpenAPI document against the real server: every route is in it, and
schemathesis (the standard OpenAPI fuzzer), run against the served document,
finds no request the two judge differently and no answer the document does not
allow, following the document's links from a new card to its task routes.
"""

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ankisync
import helpers
import openapi
from service import CARD, Service

JSON = "application/json"
# The fuzzer's requests come from 127.0.0.1, where its wrong keys soon lock /login
# and /refresh out (429, which the document allows and the run checks). The test
# logs in once, from an address of its own, and the run reuses that token.
OWN_ADDRESS = "127.0.3.1"
# Every check of the pinned schemathesis but two: use_after_free (DELETE on a task
# cancels it, and a cancelled task stays readable: status failure, Cancelled) and
# object_level_authorization (it needs two users; ankisync has one).
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance",
          "negative_data_rejection", "positive_data_acceptance", "missing_required_header",
          "unsupported_method", "allow_header_conformance", "ensure_resource_availability",
          "ignored_auth"]
EXAMPLES = 60  # test cases per operation and phase: ~1,100 requests in all
RUN_TIMEOUT = 100  # seconds: the bound on the whole run, however loaded the machine
SEED = 20261130  # a fixed seed: CI runs the same cases; the output names it for replay
# The stateful phase follows the document's own links only (openapi.TASK_LINKS: a
# new card's taskId to the task routes), not links schemathesis guesses, so that
# each of them is taken in every run.
CONFIG = """
[phases.stateful.inference]
algorithms = []
"""
LINKED = {"status": "GET /api/v1/tasks/{taskId}", "cancel": "DELETE /api/v1/tasks/{taskId}",
          "retry": "POST /api/v1/tasks/{taskId}/retry"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One running install: no sync login, no TTS: cards are made locally."""
    service = Service(tmp_path_factory.mktemp("openapi") / "data",
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    yield service
    service.kill()


def send(service, method, path, body=None, token=None):
    """(status, headers, parsed body) of one request from OWN_ADDRESS."""
    headers = {"x-access-token": token} if token else {}
    status, got, raw = helpers.send(service.port, method, path, body, headers,
                                    source=OWN_ADDRESS)
    return status, got, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def token(api):
    status, _, pair = send(api, "POST", "/api/v1/login", {"key": api.api_key})
    assert status == 201, pair
    api.token = pair["accessToken"]  # Service's helpers use it, and never log in again
    return api.token


def served_document(service):
    status, headers, doc = send(service, "GET", "/api/v1/openapi.json")
    assert status == 200 and headers["Content-Type"] == JSON
    return doc


# --- the document ---------------------------------------------------------------

def test_openapi_document_has_every_route_and_method(api):
    doc = served_document(api)
    assert doc["openapi"].startswith("3.")
    documented = {(re.sub(r"\{(\w+)\}", "<>", path), method.upper())
                  for path, item in doc["paths"].items() for method in item
                  if method != "parameters"}
    served = {(re.sub(r"<\w+>", "<>", route.rule), route.method) for route in ankisync.app.routes}
    assert documented == served
    schemes = doc["components"]["securitySchemes"]
    assert schemes["accessToken"] == {**schemes["accessToken"], "type": "apiKey",
                                      "in": "header", "name": "x-access-token"}
    assert schemes["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/api/v1/login"]["post"]["security"] == []


def test_openapi_card_is_the_servers_field_table(api):
    card = served_document(api)["components"]["schemas"]["Card"]
    options = {"onDuplicate"}  # how to make the card, not a field of its note
    assert {name: (name in card["required"], field["maxLength"])
            for name, field in card["properties"].items()
            if name not in options} == ankisync.CARD_FIELDS
    assert card["properties"]["onDuplicate"]["enum"] == list(ankisync.duplicates.RULES)


CLOZE_SAMPLES = [
    "He told the {{c1::extraordinary}} story.", "{{c12::x}}", "{{c1::}x}}", "{{c1::x}y}}",
    "{{c1::a\nb}}", "a {{c1::b::hint}} c", "{{c1::}}}", "{{c1::}}", "{{c1::}}x}}", "{{c1::x}",
    "{{c::x}}", "{{C1::x}}", "{c1::x}}", "{{c1:x}}", "plain text", "", "}} {{c1::", "{{c1::}}}}",
    "{{c1::}}} {{c2::y}}", "{{c1:: }}", "x{{c3::}}}y}}", "{{c1::{{c2::x}}}}",
    # Anki makes cards of clozes 1 to 65535 only
    "{{c0::x}}", "{{c00::x}}", "{{c01::x}}", "{{c9999::x}}", "{{c10000::x}}", "{{c59999::x}}",
    "{{c60000::x}}", "{{c64999::x}}", "{{c65499::x}}", "{{c65529::x}}", "{{c65535::x}}",
    "{{c65536::x}}", "{{c70000::x}}", "{{c99999999999::x}}", "{{c0::x}} {{c2::y}}",
    "{{c\u0663::x}}", "{{c1\u0663::x}}"]


def test_the_documents_cloze_rules_are_the_servers():
    """The patterns the document gives (ECMA-262, no lookahead) decide as the server does."""
    for text in CLOZE_SAMPLES:
        assert bool(re.search(openapi.CLOZE_PATTERN, text)) == bool(
            ankisync.CLOZE.search(text)), text
        assert bool(re.search(openapi.CLOZE_MARK_PATTERN, text)) == bool(
            ankisync.CLOZE_MARK.search(text)), text


@pytest.mark.parametrize("example, status", [
    ("He told the {{c0::extraordinary}} story.", 400),
    ("He told the {{c65536::extraordinary}} story.", 400),
    ("He told the {{c\u0663::extraordinary}} story.", 400),
    ("He told the {{c65535::extraordinary}} story.", 202),
    ("He told the {{c01::extraordinary}} story.", 202)])
def test_a_cloze_anki_makes_no_card_of_is_refused_at_the_door(api, token, example, status):
    """The document's cloze numbers, 1 to 65535, are Anki's: others are refused with 400
    naming englishExample, not accepted and failed later by the worker."""
    got, _, body = send(api, "POST", "/api/v1/clozeNotes", {**CARD, "englishExample": example},
                        token=token)
    assert got == status, body
    if status == 400:
        assert "englishExample" in body["errors"], body
    else:
        job, _ = api.wait(body["taskId"])
        assert job["status"] == "success", job


def test_the_documents_not_blank_is_pythons_strip():
    """A required field must keep a character after strip(), as validate_card asks."""
    pattern = re.compile(openapi.NOT_BLANK)
    for code in range(0x110000):
        assert bool(pattern.fullmatch(chr(code))) != chr(code).isspace(), hex(code)


def test_an_empty_before_is_the_first_page_and_a_malformed_one_is_refused(api, token):
    assert api.post_card()[0] == 202
    status, _, first = send(api, "GET", "/api/v1/tasks", token=token)
    assert status == 200 and first["tasks"], first
    status, _, empty = send(api, "GET", "/api/v1/tasks?before=&status=&limit=", token=token)
    assert status == 200 and [task["taskId"] for task in empty["tasks"]] == [
        task["taskId"] for task in first["tasks"]]
    status, headers, body = send(api, "GET", "/api/v1/tasks?before=nonsense", token=token)
    assert status == 400 and headers["Content-Type"] == JSON, body
    assert "before" in body["message"] and "next" in body["message"]
    status, _, body = send(api, "GET", "/api/v1/tasks?before=" + "0" * 32, token=token)
    assert status == 404, body


def test_a_preflight_is_answered_whatever_the_task_id(api, token):
    """A browser's preflight passes for any id, so the page then reads the real
    request's JSON 404; the document says so for OPTIONS (not GET's id pattern)."""
    for path in ("/api/v1/tasks/%C2%84", "/api/v1/tasks/nonsense/retry"):
        status, _, _ = send(api, "OPTIONS", path)
        assert status == 204, path
        method = "POST" if path.endswith("/retry") else "GET"
        status, headers, body = send(api, method, path, token=token)
        assert status == 404 and headers["Content-Type"] == JSON and "no task" in body["message"]
    paths = served_document(api)["paths"]
    for template in ("/api/v1/tasks/{taskId}", "/api/v1/tasks/{taskId}/retry"):
        [parameter] = paths[template]["options"]["parameters"]
        assert parameter["name"] == "taskId" and parameter["schema"]["pattern"] == "^[^/]+$"
        assert "404" in paths[template]["options"]["responses"]


# --- schemathesis against the served document --------------------------------------

def schemathesis_run(service, token, workdir):
    """Run the schemathesis CLI of this virtualenv; (exit status, output, events)."""
    events, config = workdir / "events.ndjson", workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
        f"{service.url}/api/v1/openapi.json",
        "--header", f"x-access-token: {token}",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--request-timeout", "30", "--generation-database", "none", "--no-color",
        "--report", "ndjson", "--report-ndjson-path", str(events)]
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("SCHEMATHESIS_")}  # no hooks or settings from outside
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    output = done.stdout + done.stderr
    assert events.exists(), output[-5_000:]
    with events.open() as lines:
        return done.returncode, output, [json.loads(line) for line in lines]


def links_followed(events):
    """(link name, target) -> the statuses the task routes answered when the run
    followed the document's links from POST /api/v1/clozeNotes with a task id."""
    followed = collections.defaultdict(list)
    for event in events:
        recorder = event.get("ScenarioFinished", {}).get("recorder", {})
        for case_id, case in recorder.get("cases", {}).items():
            # "POST /api/v1/clozeNotes -> [202] cancel -> DELETE /api/v1/tasks/{taskId}"
            transition = case.get("transition") or {}
            parts = transition.get("id", "").split(" -> ")
            answer = recorder.get("interactions", {}).get(case_id, {}).get("response")
            if (len(parts) != 3 or parts[0] != "POST /api/v1/clozeNotes" or not answer
                    or transition.get("is_inferred") or not case.get("is_transition_applied")):
                continue
            task_id = transition["parameters"]["path_parameters"]["taskId"]["value"]
            if re.fullmatch("[0-9a-f]{32}", str(task_id)):
                followed[parts[1].split("] ")[1], parts[2]].append(answer["status_code"])
    return followed


@pytest.mark.slow
def test_schemathesis_finds_no_disagreement(api, token, tmp_path):
    """The fuzzer's phases and checks, bounded in cases and time; each finding fails."""
    status, output, events = schemathesis_run(api, token, tmp_path)
    assert status == 0, output[-20_000:]
    generated = re.search(r"Test cases:\s+(\d+) generated, \1 passed", output)
    assert generated and int(generated[1]) > 10 * EXAMPLES, output[-5_000:]
    followed = links_followed(events)
    for name, target in LINKED.items():
        statuses = followed.get((name, target), [])
        # a real id: the task is found (only 401 when the fuzzer drops the token)
        assert any(code not in (401, 404) for code in statuses), (name, dict(followed))
    # and the token still works: the fuzzer's failed logins locked out only its address
    assert send(api, "GET", "/api/v1/health", token=token)[0] == 200
