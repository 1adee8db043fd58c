"""Hostile clients against the real server: throttling, CORS, the OpenAPI document,
a time-bounded fuzz run of the whole API, and no secret in any log.

Token attacks (alg none, other key, expired, wrong type, rotation, reuse) are in
test_api.py. Requests here come from chosen loopback addresses (127.0.x.y, all
of them this machine) so that the per-address login throttle can be seen at work
without locking out the other tests.
"""

import collections
import http.client
import json
import re
import time
import urllib.parse

import jwt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ankisync
import throttle
from anki_server import SyncServer
from conftest import GOOGLE_KEY
from service import CARD, Service

FUZZ_SECONDS = 45  # the whole fuzz run stays under a minute
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
    """Fail throttle.LIMIT logins from source; the answer to one more wrong key."""
    for _ in range(throttle.LIMIT):
        assert login(service, "ak_wrong", source)[0] == 403
    return login(service, "ak_wrong", source)


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


# --- the OpenAPI document ---------------------------------------------------------

def served_document(service):
    status, headers, raw = send(service, "GET", "/api/v1/openapi.json")
    assert status == 200 and headers["Content-Type"] == JSON
    return json.loads(raw)


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
    assert {name: (name in card["required"], field["maxLength"])
            for name, field in card["properties"].items()} == ankisync.CARD_FIELDS


# A small validator for the JSON Schema subset the document uses: enough to hold
# each answer of the fuzz run to what the document promises.

def schema_errors(schema, value, doc, where="body"):
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return schema_errors(doc["components"]["schemas"][name], value, doc, where)
    if value is None:
        return [] if schema.get("nullable") or not schema else [f"{where} is null"]
    if "allOf" in schema:
        return [e for sub in schema["allOf"] for e in schema_errors(sub, value, doc, where)]
    if "oneOf" in schema:
        tried = [schema_errors(sub, value, doc, where) for sub in schema["oneOf"]]
        return [] if any(not errors for errors in tried) else [f"{where}: {tried}"]
    types = {"object": dict, "array": list, "string": str, "boolean": bool,
             "integer": int, "number": (int, float)}
    kind = schema.get("type")
    if kind and (not isinstance(value, types[kind])
                 or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{where} is not {kind}: {value!r:.80}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}={value!r} not in {schema['enum']}"]
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return [f"{where}={value!r:.80} does not match {schema['pattern']}"]
    errors = []
    if isinstance(value, dict):
        errors += [f"{where}.{name} missing" for name in schema.get("required", ())
                   if name not in value]
        for name, item in value.items():
            sub = schema.get("properties", {}).get(name, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += schema_errors(sub, item, doc, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for number, item in enumerate(value):
            errors += schema_errors(schema["items"], item, doc, f"{where}[{number}]")
    return errors


# --- the fuzz run -----------------------------------------------------------------

METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]
NASTY_IDS = ["0" * 32, "F" * 32, "0" * 31, "0" * 33, "..%2F..%2Fcredentials.json", "%00",
             "1%27%20or%20%271%27%3D%271", "%F0%9F%92%A5", "%ff%fe", "~", "null", "-1"]
NASTY_TEXT = ["", " ", "\x00", "\u202e", "💥" * 50, "\ud800", "{{c1::}}", "{{c1::x}}",
              "<script>alert(1)</script>", "'; DROP TABLE ankisync_jobs; --", "%s%n",
              "../../../../etc/passwd", "x" * 70_000, "\\", "\n" * 100]
CONTENT_TYPES = [JSON] * 12 + ["application/json; charset=utf-8", "APPLICATION/JSON",
                 "application/json;charset=latin-1", "text/plain", "application/x-www-form-"
                 "urlencoded", "multipart/form-data; boundary=x", "application/xml", "",
                 "application/jsonx", "*/*", None]
RAW_BODIES = [b"", b"{", b"[]", b"null", b"1e999999", b'"x"', b"\xff\xfe\x00", b"\xef\xbb\xbf{}",
              b"[" * 40_000, b'{"a":' * 20_000, b'{"key": "\\ud800"}',
              b'{"word": "\\udfff", "englishExample": "{{c1::\\ud800}}"}', b"NaN",
              b'{"word": 1e400}', b"x" * 70_000, b'{"__proto__": {}}', b"\x00" * 100]

# what a header value may hold (RFC 9110: visible ASCII, space, obs-text): waitress
# refuses anything else itself, in plain text, before the app is asked
HEADER_TEXT = st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=50) | st.sampled_from(NASTY_TEXT),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner,
                                                                max_size=5),
    max_leaves=20)


def field_values(longest):
    return st.one_of(
        st.text(max_size=min(longest, 60)), st.just("x" * longest), st.just("x" * (longest + 1)),
        st.sampled_from(NASTY_TEXT), json_values)


def cards():
    """Cards that are right, nearly right and wrong, field by field."""
    fields = {name: field_values(longest) for name, (_, longest) in ankisync.CARD_FIELDS.items()}
    valid_example = st.builds(lambda a, w, b: f"{a}{{{{c1::{w}}}}}{b}", st.text(max_size=30),
                              st.text(min_size=1, max_size=30).filter(lambda w: "}}" not in w),
                              st.text(max_size=30))
    fields["englishExample"] = valid_example | fields["englishExample"]
    one_wrong = st.sampled_from(sorted(fields)).flatmap(
        lambda name: fields[name].map(lambda value: {**CARD, name: value}))
    return st.one_of(
        st.just(CARD), one_wrong, valid_example.map(lambda text: {**CARD, "englishExample": text}),
        st.fixed_dictionaries({}, optional={**fields, "extra": json_values}).map(
            lambda card: {**CARD, **card}),
        st.fixed_dictionaries({}, optional=fields))


class Fuzz:
    """What the run has learned (task ids, tokens) and what it found wrong."""

    def __init__(self, service, doc):
        self.service, self.doc = service, doc
        self.requests, self.found = 0, {}
        self.statuses = collections.Counter()
        self.task_ids = []
        self.tokens = {}

    def operation(self, method, path):
        """The documented (template, operation) for a concrete request, or (None, None)."""
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, urllib.parse.unquote(path.split("?")[0])):
                return template, item.get(method.lower(), item.get("get") if method == "HEAD"
                                          else None)
        return None, None

    def source(self):
        """Mostly a fresh loopback address, so that the throttle rarely hides a route;
        one in ten from a few addresses that it locks out."""
        number = self.requests
        if number % 10 == 0:
            return f"127.0.1.{number % 7 + 1}"
        return f"127.1.{number // 250 % 8}.{number % 250 + 1}"

    def check(self, method, path, headers, body, chunked=False):
        sent = iter([body[:len(body) // 2], body[len(body) // 2:]]) if chunked else body
        raw_headers = {name: value.encode() for name, value in headers.items()}  # UTF-8 too
        self.requests += 1
        try:
            status, got, raw = send(self.service, method, path, sent, raw_headers,
                                    source=self.source(), timeout=60)
        except OSError as error:
            status, got, raw = 0, {}, repr(error).encode()
        problems = [] if status else [f"no answer: {raw.decode()}"]
        self.statuses[status] += 1
        text = raw.decode("utf-8", "replace")
        if status >= 500:
            problems.append(f"answered {status}")
        if "Traceback" in text or 'File "' in text:
            problems.append("traceback in the body")
        if status != 204 and got.get("Content-Type") != JSON:
            problems.append(f"Content-Type {got.get('Content-Type')!r}")
        parsed = None
        if method != "HEAD" and status != 204:
            try:
                parsed = json.loads(raw)
            except ValueError:
                problems.append("body is not JSON")
        if status >= 400 and method != "HEAD" and not (
                isinstance(parsed, dict) and isinstance(parsed.get("message"), str)):
            problems.append("error body without a string message")
        template, operation = self.operation(method, path)
        if operation is not None and status not in (404, 405):
            answer = operation["responses"].get(str(status))
            if answer is None:
                problems.append(f"status {status} is not in the document for {method} {template}")
            elif parsed is not None and "content" in answer:
                schema = answer["content"][JSON]["schema"]
                problems += schema_errors(schema, parsed, self.doc)[:3]
        elif template is None and status not in (404, 405, 413):
            problems.append(f"status {status} for a route the document does not have")
        if isinstance(parsed, dict) and isinstance(parsed.get("taskId"), str):
            self.task_ids.append(parsed["taskId"])
        for problem in problems:
            kind = (method, template or path[:40], re.sub(r"\d+", "N", problem)[:120])
            self.found.setdefault(kind, (status, text[:300], headers, (body or b"")[:300],
                                         chunked))

    def report(self):
        return "\n".join(f"{kind}: {status} {text!r}\n    request headers {headers!r} body"
                         f" {body!r}{' (chunked)' if chunked else ''}"
                         for kind, (status, text, headers, body, chunked) in self.found.items())


def make_tokens(service):
    """Good and bad credentials for the fuzz's headers."""
    stored = json.loads((service.data_dir / "credentials.json").read_text())
    pair = json.loads(send(service, "POST", "/api/v1/login", {"key": service.api_key})[2])
    now = int(time.time())
    claims = {"iss": "ankisync", "iat": now, "exp": now + 600, "type": "access", "jti": "j",
              "gen": stored["token_generation"]}
    secret = stored["jwt_secret"]
    return {
        "access": pair["accessToken"], "refresh": pair["refreshToken"],
        "expired": jwt.encode({**claims, "exp": now - 3600}, secret, algorithm="HS256"),
        "none": jwt.encode(claims, None, algorithm="none"),
        "other key": jwt.encode(claims, "k" * 64, algorithm="HS256"),
        "old generation": jwt.encode({**claims, "gen": -1}, secret, algorithm="HS256"),
        "no type": jwt.encode({k: v for k, v in claims.items() if k != "type"}, secret,
                              algorithm="HS256"),
        "HS512": jwt.encode(claims, secret, algorithm="HS512"),
        "garbage": "a.b.c", "huge": "e" * 8000, "unicode": "токен",
    }


def requests(fuzz):
    """A strategy of (method, path, headers, body) requests, mostly for real operations."""
    doc = fuzz.doc
    templates = list(doc["paths"])

    @st.composite
    def draw(draw):
        pick = draw(st.integers(0, 9))
        if pick == 0:
            template = "/api/v1/" + urllib.parse.quote(draw(st.text(max_size=20)), safe="/")
        else:  # the main route more often: its paths go deepest
            template = "/api/v1/clozeNotes" if pick < 4 else draw(st.sampled_from(templates))
        item = doc["paths"].get(template, {})
        methods = [m.upper() for m in item if m != "parameters"]
        method = draw(st.sampled_from(methods) if methods and draw(st.integers(0, 4))
                      else st.sampled_from(METHODS))
        index = draw(st.integers(0, 10**6))
        task_id = draw(st.sampled_from(NASTY_IDS) | st.text("0123456789abcdef", min_size=32,
                                                            max_size=32)
                       | st.builds(lambda s: urllib.parse.quote(s, safe=""), st.text(max_size=40)))
        if fuzz.task_ids and draw(st.booleans()):
            task_id = fuzz.task_ids[index % len(fuzz.task_ids)]
        path = template.replace("{taskId}", task_id)
        query = draw(st.dictionaries(
            st.sampled_from(["status", "limit", "before", "async", "x"]),
            st.sampled_from(["pending", "started", "retrying", "success", "failure", "0", "1",
                             "100", "101", "-5", "1e3", "true", "false", task_id])
            | st.text(max_size=20), max_size=3))
        if query.get("async") in ("false", "0", "no"):
            query["async"] = "true"  # waiting for jobs would spend the time budget
        if query:
            path += "?" + urllib.parse.urlencode(query)

        headers = {}
        token = draw(st.sampled_from([None, *fuzz.tokens, *["access"] * 8]))  # mostly good
        if token is not None:
            value = fuzz.tokens[token]
            if draw(st.booleans()):
                headers["x-access-token"] = value
            else:
                headers["Authorization"] = draw(st.sampled_from(["Bearer ", "bearer ", "Basic ",
                                                                 "Bearer  ", ""])) + value
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        if content_type is not None:
            headers["Content-Type"] = content_type
        if draw(st.integers(0, 3)) == 0:
            headers["Idempotency-Key"] = draw(st.sampled_from(["k1", "k2", "k" * 200, "k" * 201])
                                              | st.text(HEADER_TEXT, max_size=30))
        if draw(st.integers(0, 3)) == 0:
            headers["Origin"] = draw(st.sampled_from(["https://a.example", "null", "*"]))
        if draw(st.integers(0, 5)) == 0:
            headers["X-Forwarded-For"] = "127.0.0.1"

        shape = draw(st.integers(0, 9))
        if shape <= 3:
            body = json.dumps(draw(cards())).encode()
        elif shape in (4, 5):
            key = draw(st.sampled_from([fuzz.service.api_key, None]) | json_values)
            refresh = draw(st.sampled_from([None, *fuzz.tokens.values()]) | json_values)
            body = json.dumps({"key": key, "refreshToken": refresh}).encode()
        elif shape == 6:
            body = json.dumps(draw(json_values)).encode()
        elif shape == 7:
            body = draw(st.sampled_from(RAW_BODIES))
            headers["Content-Type"] = JSON
        elif shape == 8:
            body = draw(st.binary(max_size=200))
        else:
            body = None
        if body and len(body) > 200_000:  # past waitress's own cap: see test_huge_bodies
            body = body[:100_000]
        chunked = bool(body) and draw(st.integers(0, 9)) == 0
        return method, path, headers, body, chunked

    return draw()


def test_fuzz_the_whole_api(api):
    """Random and hostile requests for FUZZ_SECONDS: no 5xx, no traceback, JSON errors."""
    fuzz = Fuzz(api, served_document(api))
    fuzz.tokens = make_tokens(api)
    for _ in range(3):  # a few real tasks for the task routes to find
        fuzz.task_ids.append(api.post_card()[1]["taskId"])
    deadline = time.monotonic() + FUZZ_SECONDS
    for template, item in fuzz.doc["paths"].items():  # every known-nasty body, everywhere
        path = template.replace("{taskId}", fuzz.task_ids[0])
        for method in [m.upper() for m in item if m in ("post", "delete")]:
            for body in RAW_BODIES + [json.dumps({"key": text, "refreshToken": text, **CARD,
                                                  "word": text}).encode()
                                      for text in NASTY_TEXT]:
                fuzz.check(method, path, {"Content-Type": JSON,
                                          "x-access-token": fuzz.tokens["access"]}, body)

    @settings(max_examples=100, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(requests(fuzz))
    def batch(request):
        if time.monotonic() < deadline:
            fuzz.check(*request)

    while time.monotonic() < deadline:
        batch()
    print(f"fuzz: {fuzz.requests} requests, answers by status {sorted(fuzz.statuses.items())},"
          f" {len(fuzz.found)} kinds of failure")
    assert not fuzz.found, f"{fuzz.requests} requests; failures:\n{fuzz.report()}"
    assert fuzz.requests > 100


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
