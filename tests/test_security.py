"""Hostile clients against the real server: throttling, CORS, and no secret in any
log. The OpenAPI document and the fuzz run of the whole API are in test_openapi.py.

Token attacks (alg none, other key, expired, wrong type, rotation, reuse) are in
test_api.py. Requests here come from chosen loopback addresses (127.0.x.y, all
of them this machine) so that the per-address login throttle can be seen at work
without locking out the other tests.
"""

import json
import time

import pytest

import ankisync
import helpers
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
    return helpers.send(service.port, method, path, body, headers, source, timeout)


def login(service, key, source):
    status, headers, raw = send(service, "POST", "/api/v1/login", {"key": key}, source=source)
    return status, headers, json.loads(raw)


# --- login throttling -----------------------------------------------------------

def lock_out(service, source):
    """Fail throttle.LIMIT logins from source; the answer to one more wrong key."""
    for _ in range(throttle.LIMIT):
        assert login(service, "ak_wrong", source)[0] == 403
    return login(service, "ak_wrong", source)


@pytest.mark.slow
def test_lockout_stops_wrong_guesses_and_releases(api):
    status, headers, body = lock_out(api, "127.0.2.1")
    assert status == 429, body
    wait = int(headers["Retry-After"])
    assert 1 <= wait <= throttle.FIRST_LOCKOUT and str(wait) in body["message"]
    assert headers["Content-Type"] == JSON
    status, _, raw = send(api, "POST", "/api/v1/refresh", {"refreshToken": "x"},
                          source="127.0.2.1")
    assert status == 429, raw
    # X-Forwarded-For is anyone's to write: it does not move the caller elsewhere
    status, _, _ = send(api, "POST", "/api/v1/login", {"key": "ak_wrong"},
                        headers={"X-Forwarded-For": "127.0.2.2"}, source="127.0.2.1")
    assert status == 429
    # another address is not locked out
    assert login(api, "ak_wrong", "127.0.2.2")[0] == 403

    time.sleep(wait + 0.1)
    assert login(api, "ak_wrong", "127.0.2.1")[0] == 403  # released: a plain refusal again


def test_the_right_key_and_a_valid_refresh_token_pass_a_lockout(api):
    """Whoever shares the user's address (a page, a neighbour) cannot lock the user out."""
    pair = login(api, api.api_key, "127.0.2.5")[2]
    assert lock_out(api, "127.0.2.5")[0] == 429
    status, _, raw = send(api, "POST", "/api/v1/refresh", {"refreshToken": pair["refreshToken"]},
                          source="127.0.2.5")
    assert status == 201, raw
    assert lock_out(api, "127.0.2.5")[0] == 429
    status, _, body = login(api, api.api_key, "127.0.2.5")
    assert status == 201 and body["accessToken"], body


@pytest.mark.slow
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
    assert login(api, "ak_wrong", "127.0.2.4")[0] == 429


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

@pytest.fixture(scope="module")
def wildcard(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("wildcard") / "data", ANKISYNC_CORS_ORIGINS="*",
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    yield service
    service.kill()


def test_cors_default_allows_the_dictionary_site_only(api):
    for method, path in [("GET", "/api/v1/health"), ("OPTIONS", "/api/v1/clozeNotes"),
                         ("POST", "/api/v1/login")]:
        _, got, _ = send(api, method, path, headers={"Origin": "https://dictionary.cambridge.org"})
        assert got["Access-Control-Allow-Origin"] == "https://dictionary.cambridge.org"
        for other in ["https://x.example", "http://dictionary.cambridge.org", "null"]:
            _, got, _ = send(api, method, path, headers={"Origin": other})
            assert "Access-Control-Allow-Origin" not in got, (method, other)


def test_cors_wildcard_never_allows_credentials(wildcard):
    api = wildcard
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
                      ANKISYNC_ALLOWED_HOSTS="anki.example",
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


def test_a_foreign_host_name_is_refused(api, listed):
    """DNS rebinding: a page on evil.example that now resolves to 127.0.0.1 sends its name."""
    for host in ["evil.example", "evil.example:%d" % api.port, "localhost.evil.example"]:
        status, got, raw = send(api, "GET", "/api/v1/health", headers={"Host": host})
        assert status == 403 and got["Content-Type"] == JSON, (host, raw)
        assert "ANKISYNC_ALLOWED_HOSTS" in json.loads(raw)["message"]
        assert send(api, "POST", "/api/v1/login", {"key": api.api_key},
                    headers={"Host": host})[0] == 403
    import socket
    for host in ["127.0.0.1:%d" % api.port, "localhost:%d" % api.port, "[::1]:%d" % api.port,
                 "localhost", "192.0.2.7", socket.gethostname(), "ankisync.localhost"]:
        assert send(api, "GET", "/", headers={"Host": host})[0] == 200, host
    # a name the user configured (listed has ANKISYNC_ALLOWED_HOSTS=anki.example)
    assert send(listed, "GET", "/", headers={"Host": "anki.example:443"})[0] == 200
    assert send(listed, "GET", "/", headers={"Host": "evil.example"})[0] == 403


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
        # no reuse interval to speak of, so the reuse below revokes (and is logged)
        service = make_service(ANKISYNC_SYNC_ENDPOINT=sync.url,
                               ANKISYNC_REFRESH_REUSE_INTERVAL="0.001")
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


# --- floods: cards per login, the queue, ?async=false, slow connections ----------------

def count_jobs(service):
    return sum(service.call("GET", "/api/v1/health")[2]["jobs"].values())


def test_cards_per_login_and_the_queue_are_capped(make_service, fake_tts):
    service = make_service(ANKISYNC_CARD_BURST=4, ANKISYNC_CARD_RATE=0.01,
                           ANKISYNC_MAX_QUEUED=3)
    fake_tts.hold()  # the worker stays on the first card: the others wait in the queue
    try:
        tasks = [service.post_card()[1]["taskId"] for _ in range(3)]
        before = count_jobs(service)
        status, headers, body = service.call("POST", "/api/v1/clozeNotes", CARD)
        assert status == 429 and "ANKISYNC_MAX_QUEUED" in body["message"], body
        assert int(headers["Retry-After"]) > 0 and count_jobs(service) == before
    finally:
        fake_tts.release()
    for task in tasks:
        assert service.wait(task)[0]["status"] == "success"
    assert service.post_card()[0] == 202  # the fourth card of this login's burst
    before = count_jobs(service)
    status, headers, body = service.call("POST", "/api/v1/clozeNotes", CARD)
    assert status == 429 and "ANKISYNC_CARD_BURST" in body["message"], body
    assert int(headers["Retry-After"]) == body["retryAfter"] >= 1
    assert count_jobs(service) == before  # no job for a refused card
    # the allowance is per login: another login (another token family) has its own
    service.token = None
    assert service.post_card()[0] == 202


def test_waiting_requests_cannot_starve_login_and_health(make_service, fake_tts):
    """Twenty ?async=false posts while the worker is held: a few wait, the others are
    answered 202 at once, and login and health stay reachable."""
    import concurrent.futures
    service = make_service()
    token = service.login()
    fake_tts.hold()
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            posts = [pool.submit(send, service, "POST", "/api/v1/clozeNotes?async=false", CARD,
                                 {"x-access-token": token}) for _ in range(20)]
            early = []
            for future in concurrent.futures.as_completed(posts, timeout=30):
                early.append(future)
                if len(early) == 20 - ankisync.MAX_WAITERS:
                    break
            answered = [future.result() for future in early]
            assert all(status == 202 for status, _, _ in answered), answered
            body = json.loads(answered[0][2])
            assert "poll statusUrl" in body["message"] and body["statusUrl"]
            # the waiters are still waiting, and the API answers the rest
            assert sum(not post.done() for post in posts) == ankisync.MAX_WAITERS
            assert login(service, service.api_key, "127.0.0.1")[0] == 201
            status, _, raw = send(service, "GET", "/api/v1/health",
                                  headers={"x-access-token": token}, timeout=10)
            assert status == 200, raw
            fake_tts.release()
            waited = [post.result(timeout=60) for post in posts if post not in early]
            assert len(waited) == ankisync.MAX_WAITERS
            assert all(status == 200 for status, _, _ in waited), waited
    finally:
        fake_tts.release()


@pytest.mark.slow
def test_slow_connections_do_not_take_the_api_down(api):
    """Slowloris: 100 connections that drip a header byte every 2 s, for a bounded time;
    meanwhile new clients log in and read health (loopback only)."""
    import socket
    import threading
    stop = threading.Event()
    slow = []
    try:
        for _ in range(100):
            conn = socket.create_connection(("127.0.0.1", api.port), timeout=5)
            conn.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(conn)

        def drip():
            while not stop.wait(2):
                for conn in slow:
                    try:
                        conn.sendall(b"X")
                    except OSError:
                        pass
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        for _ in range(3):  # three rounds of real clients during the attack (about 6 s)
            status, _, raw = send(api, "POST", "/api/v1/login", {"key": api.api_key},
                                  source="127.0.3.1", timeout=10)
            assert status == 201, raw
            token = json.loads(raw)["accessToken"]
            status, _, raw = send(api, "GET", "/api/v1/health",
                                  headers={"x-access-token": token}, timeout=10)
            assert status == 200, raw
            stop.wait(2)
    finally:
        stop.set()
        for conn in slow:
            conn.close()


def test_an_unclosed_angle_bracket_is_text_not_the_start_of_a_tag(api):
    # an HTML parser drops an unfinished tag to the end of the field, the cloze with it
    status, body = api.post_card({**CARD, "englishExample": 'He said a <b "odd" {{c1::x}} y'})
    assert status == 202, body
    _, _, listed = api.call("GET", "/api/v1/tasks?limit=100")
    [task] = [task for task in listed["tasks"] if task["taskId"] == body["taskId"]]
    assert "{{c1::x}}" in task["sentence"] and "&lt;b" in task["sentence"], task


def test_card_fields_lose_script_but_keep_text_and_bold(make_service, sync_server, account,
                                                         tmp_path):
    """Anki's reviewer runs a field's script: none reaches the note on the server."""
    from anki_server import download_collection, notes_in
    service = make_service()
    service.sync_login(account)
    hostile = {**CARD,
               "word": "<img src=x onerror=alert(1)>bold",
               "englishExample": "He <b>told</b> the {{c1::a < b & c}} story"
                                 "<script>alert(1)</script>.",
               "englishDefinition": '<a href="javascript:alert(1)">very</a> <i onclick="x()">'
                                    "unusual</i><br>special",
               "exampleTranslation": "<svg onload=alert(1)>Er erzählte</svg>",
               "definitionTranslation": "<iframe src=//x.example></iframe>außergewöhnlich"}
    status, body = service.post_card(hostile)
    assert status == 202, body
    job, _ = service.wait(body["taskId"])
    assert job["status"] == "success" and job["result"]["synced"], job
    col = download_collection(tmp_path / "device", sync_server.url, account, "pass")
    try:
        fields = notes_in(col)[0]["fields"]
    finally:
        col.close()
    assert fields["Word"] == "bold"
    assert fields["Text"] == "He <b>told</b> the {{c1::a &lt; b &amp; c}} story."
    assert fields["EnDefinition"] == "very <i>unusual</i><br>special"
    assert fields["TextTranslation"] == "Er erzählte"
    assert fields["DefinitionTranslation"] == "außergewöhnlich"
    everything = json.dumps(fields).lower()
    for bad in ["<script", "onerror", "onload", "onclick", "javascript:", "<iframe", "<svg"]:
        assert bad not in everything
