"""The HTTP contract: auth, tokens, bad input, errors as JSON — against the real server."""

import json
import os
import socket
import stat
import subprocess
import sys
import time

import jwt
import pytest

from helpers import wait_until
from service import CARD, ROOT, Service


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One running install for the whole module; no sync login, no TTS."""
    service = Service(tmp_path_factory.mktemp("api") / "data", ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    yield service
    service.kill()


def job_count(api):
    return sum(api.call("GET", "/api/v1/health")[2]["jobs"].values())


def secret(api):
    return json.loads((api.data_dir / "credentials.json").read_text())


def test_index_answers_without_auth(api):
    assert api.call("GET", "/", token=None)[::2] == (200, {"status": "ok"})


def test_login_refuses_missing_and_wrong_keys(api):
    assert api.call("POST", "/api/v1/login", {}, token=None)[0] == 401
    status, _, body = api.call("POST", "/api/v1/login", {"key": "ak_wrong"}, token=None)
    assert status == 403 and "api-key" in body["message"]
    status, _, body = api.call("POST", "/api/v1/login", {"key": 42}, token=None)
    assert status == 403


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/tasks/" + "0" * 32])
def test_protected_routes_refuse_bad_tokens(api, path):
    stored = secret(api)
    now = int(time.time())
    claims = {"iss": "ankisync", "iat": now, "exp": now + 600, "type": "access",
              "jti": "x", "gen": stored["token_generation"]}
    expired = jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600},
                         stored["jwt_secret"], algorithm="HS256")
    other_key = jwt.encode(claims, "not-the-secret-" * 4, algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    refresh = api.call("POST", "/api/v1/login", {"key": api.api_key}, token=None)[2]
    for token, why in [(None, "missing token"), ("garbage", "invalid"), (expired, "expired"),
                       (other_key, "invalid"), (unsigned, "invalid"),
                       (refresh["refreshToken"], "not an access token")]:
        status, headers, body = api.call("GET", path, token=token)
        assert status == 401, (why, body)
        assert why in body["message"] and headers["Content-Type"] == "application/json"


def test_bearer_header_works_like_x_access_token(api):
    token = api.login()
    status, _, _ = api.call("GET", "/api/v1/health", token=None,
                            headers={"Authorization": f"Bearer {token}"})
    assert status == 200


def refresh(api, token):
    return api.call("POST", "/api/v1/refresh", {"refreshToken": token}, token=None)


def test_two_tabs_refreshing_with_the_same_token_both_stay_logged_in(api):
    """The userscript caches the refresh token per tab: both tabs refresh with it."""
    first = api.call("POST", "/api/v1/login", {"key": api.api_key}, token=None)[2]
    status_a, _, tab_a = refresh(api, first["refreshToken"])
    status_b, _, tab_b = refresh(api, first["refreshToken"])  # within the reuse interval
    assert (status_a, status_b) == (201, 201), tab_b
    for tab in (tab_a, tab_b):
        assert api.call("GET", "/api/v1/health", token=tab["accessToken"])[0] == 200
        status, _, later = refresh(api, tab["refreshToken"])
        assert status == 201, later
        assert api.call("GET", "/api/v1/health", token=later["accessToken"])[0] == 200


@pytest.mark.slow
def test_refresh_rotates_and_reuse_after_the_interval_revokes(tmp_path):
    service = Service(tmp_path / "data", ANKISYNC_REFRESH_REUSE_INTERVAL="1")
    service.start()
    try:
        first = service.call("POST", "/api/v1/login", {"key": service.api_key}, token=None)[2]
        status, _, second = refresh(service, first["refreshToken"])
        assert status == 201 and second["refreshToken"] != first["refreshToken"]
        assert service.call("GET", "/api/v1/health", token=second["accessToken"])[0] == 200
        time.sleep(1.2)  # the reuse interval passes
        # the used token is refused, and its reuse revokes the newer one too
        status, _, body = refresh(service, first["refreshToken"])
        assert status == 401 and "already used" in body["message"]
        status, _, body = refresh(service, second["refreshToken"])
        assert status == 401 and "revoked" in body["message"]
        access = service.call("POST", "/api/v1/login", {"key": service.api_key},
                              token=None)[2]["accessToken"]
        assert refresh(service, access)[0] == 401
    finally:
        service.kill()


def test_tokens_claiming_more_than_the_configured_lifetime_are_refused(api):
    stored = secret(api)
    now = int(time.time())
    claims = {"iss": "ankisync", "iat": now, "type": "access", "jti": "x",
              "gen": stored["token_generation"]}
    year_9999 = int(time.mktime((9999, 1, 1, 0, 0, 0, 0, 0, 0)))
    for why, extra in [("exp in 9999", {"exp": year_9999}),
                       ("a day", {"exp": now + 86400}),
                       ("issued tomorrow", {"iat": now + 86400, "exp": now + 86400 + 60})]:
        forged = jwt.encode({**claims, **extra}, stored["jwt_secret"], algorithm="HS256")
        status, _, body = api.call("GET", "/api/v1/health", token=forged)
        assert status == 401 and "invalid access token" in body["message"], (why, body)
    refresh_claims = {**claims, "type": "refresh", "fam": "f", "exp": year_9999}
    forged = jwt.encode(refresh_claims, stored["jwt_secret"], algorithm="HS256")
    assert refresh(api, forged)[0] == 401
    # one within the lifetime, signed alike, passes: the refusals above are for the claims
    fine = jwt.encode({**claims, "exp": now + 600}, stored["jwt_secret"], algorithm="HS256")
    assert api.call("GET", "/api/v1/health", token=fine)[0] == 200


@pytest.mark.parametrize("change, field, why", [
    ({"word": None}, "word", "is required"),
    ({"word": "   "}, "word", "must not be empty"),
    ({"word": ["list"]}, "word", "must be a string"),
    ({"code": 7}, "code", "must be a string"),
    ({"englishDefinition": "x" * 2001}, "englishDefinition", "too long"),
    ({"englishExample": "He told the story."}, "englishExample", "no cloze"),
    ({"englishExample": "He told the {{c1::}} story."}, "englishExample", "no cloze"),
    ({"exampleTranslation": "Er {{c1::erzählte}}."}, "exampleTranslation", "cloze markers"),
    ({"word": "\ud800"}, "word", None),
])
def test_bad_cards_are_refused_naming_the_field(api, change, field, why):
    before = job_count(api)
    card = {key: value for key, value in {**CARD, **change}.items() if value is not None}
    status, _, body = api.call("POST", "/api/v1/clozeNotes", card)
    assert status == 400, body
    if why is None:  # refused as a body, before its fields are read
        assert "lone surrogate" in body["message"]
    else:
        assert why in body["errors"][field] and field in body["message"]
    assert job_count(api) == before  # no job for a refused request


def test_bodies_that_are_not_a_json_card(api):
    path = "/api/v1/clozeNotes"
    status, _, body = api.call("POST", path, raw=b"word=x",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "Content-Type: application/json" in body["message"]
    status, _, body = api.call("POST", path, raw=b"{not json",
                               headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["message"]
    status, _, body = api.call("POST", path, raw=b"[" * 50_000 + b"]" * 50_000,
                               headers={"Content-Type": "application/json"})
    assert status == 413  # over the size cap before it is parsed
    status, _, body = api.call("POST", path, raw=b"[" * 30_000 + b"]" * 30_000,
                               headers={"Content-Type": "application/json"})
    assert status == 400 and "nested too deeply" in body["message"]
    status, _, body = api.call("POST", path, raw=b"[1, 2]",
                               headers={"Content-Type": "application/json"})
    assert status == 400 and "JSON object" in body["message"]
    big = json.dumps({**CARD, "padding": "x" * 70_000}).encode()
    status, _, body = api.call("POST", path, raw=big, headers={"Content-Type": "application/json"})
    assert status == 413 and "too large" in body["message"]


def test_unknown_tasks_routes_and_methods_are_json_errors(api):
    for task_id in ["0" * 32, "..%2F..%2Fetc%2Fpasswd", "1%27%20or%20%271%27%3D%271"]:
        status, _, body = api.call("GET", "/api/v1/tasks/" + task_id)
        assert status == 404 and "message" in body
    status, headers, body = api.call("GET", "/nowhere", token=None)
    assert status == 404 and headers["Content-Type"] == "application/json"
    status, _, body = api.call("DELETE", "/api/v1/login", token=None)
    assert status == 405 and "not allowed" in body["message"]
    status, _, body = api.call("OPTIONS", "/api/v1/nowhere", token=None,
                               headers={"Origin": "https://x.example"})
    assert status == 404


def test_unknown_fields_are_ignored_and_null_optionals_are_empty(api):
    card = {**CARD, "cefrLevel": None, "somethingNew": 1}
    status, _, body = api.call("POST", "/api/v1/clozeNotes", card)
    assert status == 202, body
    job, _ = api.wait(body["taskId"])
    assert job["status"] == "success" and job["result"]["synced"] is False, job


def test_credentials_are_private_and_hold_no_key(api):
    assert stat.S_IMODE(os.stat(api.data_dir).st_mode) == 0o700
    path = api.data_dir / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert api.api_key not in path.read_text()


def test_api_key_command_prints_only_the_key_and_voids_old_tokens(tmp_path):
    service = Service(tmp_path / "data")
    first = service.cli("api-key")
    assert first.returncode == 0
    key = first.stdout.strip()
    assert first.stdout == key + "\n" and key.startswith("ak_") and "shown only once" in first.stderr
    assert service.cli("api-key", "--if-missing").stdout == ""  # run.sh's first-start call
    service.api_key = key
    service.start()
    try:
        token = service.login()
        old = secret(service)
        new_key = service.cli("api-key").stdout.strip()
        assert service.call("GET", "/api/v1/health", token=token)[0] == 401
        # whoever read the old secret cannot forge tokens of the next generation
        assert secret(service)["jwt_secret"] != old["jwt_secret"]
        now = int(time.time())
        forged = jwt.encode({"iss": "ankisync", "iat": now, "exp": now + 600, "type": "access",
                             "jti": "x", "gen": old["token_generation"] + 1},
                            old["jwt_secret"], algorithm="HS256")
        status, _, body = service.call("GET", "/api/v1/health", token=forged)
        assert status == 401, body
        assert service.call("POST", "/api/v1/login", {"key": key}, token=None)[0] == 403
        service.api_key = new_key
        assert service.call("GET", "/api/v1/health", token=service.login())[0] == 200
    finally:
        service.kill()


def test_bodies_over_waitress_cap_get_json_413(api):
    """Past waitress's own limit the answer comes from waitress: JSON too, not plain text."""
    for raw in [b"x" * 300_000, json.dumps({**CARD, "word": "x" * 300_000}).encode()]:
        status, headers, body = api.call("POST", "/api/v1/clozeNotes", raw=raw,
                                         headers={"Content-Type": "application/json"})
        assert status == 413 and headers["Content-Type"] == "application/json", body
        assert "too large" in body["message"]
    # waitress's other refusals too: a malformed request line
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(b"GET /\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n")
        answer = conn.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 400") and "application/json" in answer, answer
    assert "waitress" not in answer.split("\r\n\r\n", 1)[1]


def test_a_client_hanging_up_mid_body_logs_no_traceback(api):
    before = len(api.logs().splitlines())
    for head in [b"Content-Length: 5000\r\n", b"Transfer-Encoding: chunked\r\n"]:
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
            conn.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\n" + head + b"\r\n" + b'{"key": "a')
    # a request after the hang-ups is answered, and logged after them: the log is complete
    marker = "/api/v1/tasks/" + "f" * 32
    assert api.call("GET", marker)[0] == 404
    # (a 404 is not logged: the line a card's acceptance logs marks the end instead)
    accepted = api.call("POST", "/api/v1/clozeNotes", CARD)[2]["taskId"]
    wait_until(lambda: f"job {accepted}: accepted" in api.logs(), api.logs, 10)
    new = api.logs().splitlines()[before:]
    assert "Traceback" not in "\n".join(new)
    assert len([line for line in new if "ERROR" in line or "disconnect" in line.lower()]) <= 2


def test_setup_takes_the_google_key_from_a_file_or_stdin_never_argv(tmp_path, fake_tts):
    from conftest import GOOGLE_KEY
    service = Service(tmp_path / "data", ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url,
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_SYNC_ENDPOINT=None)
    result = service.cli("setup", "--tts", "google", "--google-key", GOOGLE_KEY)
    assert result.returncode == 1 and "--google-key-file" in result.stderr
    assert GOOGLE_KEY not in result.stderr and "Traceback" not in result.stderr
    assert not (service.data_dir / "credentials.json").exists()  # refused before anything
    key_file = tmp_path / "google-key"
    key_file.write_text(GOOGLE_KEY + "\n")
    result = service.cli("setup", "--tts", "google", "--google-key-file", str(key_file))
    assert result.returncode == 0, result.stderr
    assert secret(service)["google_api_key"] == GOOGLE_KEY
    result = service.cli("setup", "--tts", "google", "--google-key-file", str(tmp_path / "no"))
    assert result.returncode == 1 and "cannot read it" in result.stderr
    # the service reads ANKISYNC_GOOGLE_API_KEY_FILE like the variable itself
    other = Service(tmp_path / "data2", ANKISYNC_GOOGLE_API_KEY=None,
                    ANKISYNC_GOOGLE_API_KEY_FILE=str(key_file))
    assert json.loads(other.cli("status", "--json").stdout)["tts"] == "google"
    # and while setup runs, ps shows no key
    slow = subprocess.Popen([sys.executable, str(ROOT / "ankisync.py"), "setup", "--tts", "google",
                             "--google-key-file", "-"], env=service.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        assert "setup --tts google --google-key-file -" in listing
        assert GOOGLE_KEY not in listing
        out, err = slow.communicate(GOOGLE_KEY + "\n", timeout=60)
        assert slow.returncode == 0, err
    finally:
        slow.kill()
