"""Hostile clients against the real server: throttling, CORS, and no secret in any
log. The OpenAPI document and the fuzz run of the whole API are in test_openapi.py.

Token attacks (alg none, other key, expired, wrong type, rotation, reuse) are in
test_api.py. Requests here come from chosen loopback addresses (127.0.x.y, all
of them this machine) so that the per-address login throttle can be seen at work
without locking out the other tests.
"""

import http.client
import json
import time

import pytest

import ankisync
import throttle
from anki_server import SyncServer
from conftest import GOOGLE_KEY
from service import CARD, Service

JSON = "application/json"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One running install for the module; no sync login, no TTS: cards are made locally."""
    service = Service(tmp_path_factory.mktemp("security") / "data",
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    yield service
    service.kill()


def send(service, method, path, body=None, headers=None, source="127.0.0.1", timeout=60):
    """(status, headers, raw body) of one request from the loopback address `source`."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": JSON, **(headers or {})}
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        conn.close()


def login(service, key, source):
    status, headers, raw = send(service, "POST", "/api/v1/login", {"key": key}, source=source)
    return status, headers, json.loads(raw)


# --- login throttling -----------------------------------------------------------

def lock_out(service, source):
    """Fail throttle.LIMIT logins from source; the answer to one more try, the right key."""
    for _ in range(throttle.LIMIT):
        assert login(service, "ak_wrong", source)[0] == 403
    return login(service, service.api_key, source)


def test_login_throttling_kicks_in_and_releases(api):
    status, headers, body = lock_out(api, "127.0.2.1")
    assert status == 429, body  # even the right key: a guesser learns nothing while locked
    wait = int(headers["Retry-After"])
    assert 1 <= wait <= throttle.FIRST_LOCKOUT and str(wait) in body["message"]
    assert headers["Content-Type"] == JSON
    status, _, raw = send(api, "POST", "/api/v1/refresh", {"refreshToken": "x"},
                          source="127.0.2.1")
    assert status == 429, raw
    # X-Forwarded-For is anyone's to write: it does not move the caller elsewhere
    status, _, _ = send(api, "POST", "/api/v1/login", {"key": api.api_key},
                        headers={"X-Forwarded-For": "127.0.2.2"}, source="127.0.2.1")
    assert status == 429
    # another address is not locked out
    assert login(api, api.api_key, "127.0.2.2")[0] == 201

    time.sleep(wait + 0.1)
    assert login(api, api.api_key, "127.0.2.1")[0] == 201
    # that success cleared the address: the next lock-out is the first, short one again
    status, headers, _ = lock_out(api, "127.0.2.1")
    assert status == 429 and int(headers["Retry-After"]) <= throttle.FIRST_LOCKOUT


def test_lockouts_grow_while_failures_go_on(api):
    status, headers, _ = lock_out(api, "127.0.2.3")
    first = int(headers["Retry-After"])
    time.sleep(first + 0.1)
    status, headers, _ = lock_out(api, "127.0.2.3")
    assert status == 429 and int(headers["Retry-After"]) > first


def test_failed_refreshes_count_too(api):
    for _ in range(throttle.LIMIT):
        status, _, _ = send(api, "POST", "/api/v1/refresh", {"refreshToken": "forged"},
                            source="127.0.2.4")
        assert status == 401
    assert login(api, api.api_key, "127.0.2.4")[0] == 429


def test_throttle_table_forgets_and_stays_bounded():
    now = [1000.0]
    table = throttle.Throttle(limit=3, window=60, first=2, longest=5, size=100,
                              clock=lambda: now[0])
    for _ in range(3):
        table.failed("a")
    assert table.wait("a") == 2
    for _ in range(3):  # failures during and after a lock-out: it grows, up to `longest`
        table.failed("a")
    assert table.wait("a") == 4
    now[0] += 4
    for _ in range(3):
        table.failed("a")
    assert table.wait("a") == 5
    now[0] += 5 + 61  # quiet for a window after the lock-out: starts afresh
    for _ in range(2):
        table.failed("a")
    assert table.wait("a") == 0
    table.failed("a")
    assert table.wait("a") == 2
    table.succeeded("a")
    assert table.wait("a") == 0 and len(table) == 0
    for number in range(10_000):  # a flood of addresses
        table.failed(f"10.0.{number // 256}.{number % 256}")
    assert len(table) == 100


def test_throttle_is_per_ipv4_address_and_per_ipv6_64():
    assert throttle.client({"REMOTE_ADDR": "192.0.2.7"}) == "192.0.2.7"
    assert throttle.client({"REMOTE_ADDR": "::ffff:192.0.2.7"}) == "192.0.2.7"
    assert (throttle.client({"REMOTE_ADDR": "2001:db8:1:2:aaaa::1"})
            == throttle.client({"REMOTE_ADDR": "2001:db8:1:2:bbbb::9"}) == "2001:db8:1:2::/64")
    assert throttle.client({"REMOTE_ADDR": "192.0.2.7", "HTTP_X_FORWARDED_FOR": "1.2.3.4"}) \
        == "192.0.2.7"


# --- CORS -------------------------------------------------------------------------

def test_cors_wildcard_never_allows_credentials(api):
    token = api.login()
    for method, path, headers in [
            ("GET", "/", {}),
            ("GET", "/api/v1/health", {"x-access-token": token}),
            ("GET", "/api/v1/health", {}),
            ("GET", "/api/v1/nowhere", {}),
            ("OPTIONS", "/api/v1/clozeNotes", {"Access-Control-Request-Method": "POST"})]:
        _, got, _ = send(api, method, path, headers={"Origin": "https://x.example", **headers})
        assert got["Access-Control-Allow-Origin"] == "*", (method, path)
        assert "Access-Control-Allow-Credentials" not in got, (method, path)


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("cors") / "data",
                      ANKISYNC_CORS_ORIGINS="https://a.example, https://b.example",
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    yield service
    service.kill()


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/api/v1/health"), ("GET", "/api/v1/nowhere"),
    ("OPTIONS", "/api/v1/clozeNotes"), ("DELETE", "/api/v1/login")])
def test_cors_with_a_list_of_origins(listed, method, path):
    _, got, _ = send(listed, method, path, headers={"Origin": "https://a.example"})
    assert got["Access-Control-Allow-Origin"] == "https://a.example"
    assert got.get_all("Vary") == ["Origin"]
    assert "Access-Control-Allow-Credentials" not in got
    _, got, _ = send(listed, method, path, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in got
    assert got.get_all("Vary") == ["Origin"]  # a cache must not serve a's answer to others
    _, got, _ = send(listed, method, path)
    assert "Access-Control-Allow-Origin" not in got


def test_preflight_names_the_methods_and_headers(listed):
    status, got, raw = send(listed, "OPTIONS", "/api/v1/tasks/" + "0" * 32,
                            headers={"Origin": "https://b.example",
                                     "Access-Control-Request-Method": "DELETE"})
    assert status == 204 and raw == b""
    assert got["Access-Control-Allow-Origin"] == "https://b.example"
    assert set(got["Access-Control-Allow-Methods"].split(", ")) == {"GET", "DELETE", "OPTIONS"}
    assert {"content-type", "x-access-token", "authorization"} <= set(
        got["Access-Control-Allow-Headers"].split(", "))


# --- secrets ----------------------------------------------------------------------

PASSWORD = "s3cret-Pa55-xyz"
WRONG_PASSWORD = "Wr0ng-Pa55-abc"


def test_logs_hold_no_secrets(make_service, tmp_path):
    """A whole run, from login to a synced card, leaves no secret in logs or CLI output."""
    with SyncServer(tmp_path / "sync", users={"alice": PASSWORD}) as sync:
        service = make_service(ANKISYNC_SYNC_ENDPOINT=sync.url)
        outputs = []
        refused = service.cli("login", "alice", stdin=WRONG_PASSWORD + "\n")
        assert refused.returncode != 0
        outputs += [refused.stdout, refused.stderr]
        result = service.sync_login("alice", password=PASSWORD)
        outputs += [result.stdout, result.stderr]

        tokens = []
        status, _, pair = service.call("POST", "/api/v1/login", {"key": service.api_key},
                                       token=None)
        assert status == 201
        tokens += pair.values()
        status, _, pair = service.call("POST", "/api/v1/refresh",
                                       {"refreshToken": pair["refreshToken"]}, token=None)
        assert status == 201
        tokens += pair.values()
        service.token = pair["accessToken"]
        assert service.call("POST", "/api/v1/refresh", {"refreshToken": tokens[1]},
                            token=None)[0] == 401  # a reuse, logged as such
        status, body = service.post_card()
        assert status == 202, body
        job, _ = service.wait(body["taskId"])
        assert job["status"] == "success" and job["result"]["synced"] is True, job
        assert job["result"]["audio"], job
        assert service.call("GET", "/api/v1/health")[0] == 200
        service.stop()

    stored = json.loads((service.data_dir / "credentials.json").read_text())
    hkey = stored["sync"]["hkey"]
    secrets = {"API key": service.api_key, "Google key": GOOGLE_KEY, "password": PASSWORD,
               "wrong password": WRONG_PASSWORD, "hkey": hkey,
               "JWT secret": stored["jwt_secret"],
               **{f"token {number}": token for number, token in enumerate(tokens)}}
    logs = service.logs()
    assert "POST /api/v1/clozeNotes" in logs or "make_card" in logs  # the run did log
    for name, value in secrets.items():
        assert value not in logs, f"the {name} is in the service log"
        for output in outputs:
            assert value not in output, f"the {name} is in the login command's output"
    # and what is kept on disk holds neither the password nor the API key nor a token
    for path in service.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name in ["API key", "password", "wrong password", "token 0", "token 2"]:
                assert secrets[name].encode() not in data, f"the {name} is in {path}"
