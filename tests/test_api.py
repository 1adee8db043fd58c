"""The HTTP contract: auth, tokens, bad input, errors as JSON — against the real server."""

import json
import os
import stat
import time

import jwt
import pytest

from service import CARD, Service


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


def test_refresh_rotates_and_detects_reuse(api):
    first = api.call("POST", "/api/v1/login", {"key": api.api_key}, token=None)[2]
    status, _, second = api.call("POST", "/api/v1/refresh",
                                 {"refreshToken": first["refreshToken"]}, token=None)
    assert status == 201 and second["refreshToken"] != first["refreshToken"]
    assert api.call("GET", "/api/v1/health", token=second["accessToken"])[0] == 200
    # the used token is refused, and its reuse revokes the newer one too
    status, _, body = api.call("POST", "/api/v1/refresh",
                               {"refreshToken": first["refreshToken"]}, token=None)
    assert status == 401 and "already used" in body["message"]
    status, _, _ = api.call("POST", "/api/v1/refresh",
                            {"refreshToken": second["refreshToken"]}, token=None)
    assert status == 401
    access = api.call("POST", "/api/v1/login", {"key": api.api_key}, token=None)[2]["accessToken"]
    status, _, _ = api.call("POST", "/api/v1/refresh", {"refreshToken": access}, token=None)
    assert status == 401


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
        new_key = service.cli("api-key").stdout.strip()
        assert service.call("GET", "/api/v1/health", token=token)[0] == 401
        assert service.call("POST", "/api/v1/login", {"key": key}, token=None)[0] == 403
        service.api_key = new_key
        assert service.call("GET", "/api/v1/health", token=service.login())[0] == 200
    finally:
        service.kill()


def test_world_readable_credentials_are_refused(tmp_path):
    service = Service(tmp_path / "data")
    assert service.cli("api-key").returncode == 0
    os.chmod(service.data_dir / "credentials.json", 0o644)
    result = service.cli("serve")
    assert result.returncode == 1 and "chmod 600" in result.stderr


def test_bad_settings_stop_the_start_naming_the_variable(tmp_path):
    service = Service(tmp_path / "data", ANKISYNC_TASK_TIMEOUT="soon")
    result = service.cli("serve")
    assert result.returncode == 1
    assert "ANKISYNC_TASK_TIMEOUT='soon' from environment" in result.stderr
    assert "Traceback" not in result.stderr
    service = Service(tmp_path / "data2", ANKISYNC_LISTEN="5000")
    result = service.cli("worker")
    assert result.returncode == 1 and "ANKISYNC_LISTEN" in result.stderr


def test_settings_from_the_data_dir_env_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".env").write_text("# mine\nANKISYNC_SYNC_ENDPOINT=ftp://nope\n")
    result = Service(data).cli("serve")
    assert result.returncode == 1
    assert f"ANKISYNC_SYNC_ENDPOINT='ftp://nope' from {data / '.env'}" in result.stderr


def test_a_port_in_use_is_named(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = Service(tmp_path / "data", ANKISYNC_LISTEN=f"127.0.0.1:{port}").cli("serve")
    assert result.returncode == 1 and "ANKISYNC_LISTEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_dir_open_to_others_is_closed(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    assert Service(data).cli("api-key").returncode == 0
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700


def test_readme_lists_every_setting():
    from pathlib import Path
    import config
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert config.reference() in readme
