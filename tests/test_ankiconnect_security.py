"""The AnkiConnect door as an attacker meets it: files, URLs, other users, guesses, floods.

Every test goes through the AnkiConnect port of a real running service.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anki_server import free_port
from helpers import wait_until
from service import Service
from test_ankiconnect import PICTURE, Client, basic, call, wait_for_port

URL_TIMEOUT = 2  # ANKISYNC_ANKICONNECT_URL_TIMEOUT of the door below
ALLOWED_HOST = "127.0.0.5"  # ANKISYNC_ANKICONNECT_URL_ALLOW of the door below
STRONG_KEY = "Ab3-xY9_qR7!mN2@"


@pytest.fixture(scope="module")
def door(tmp_path_factory, sync_server):
    """A service on the defaults that matter (no AnkiConnect key), with one allowed folder."""
    root = tmp_path_factory.mktemp("door")
    allowed = root / "allowed"
    allowed.mkdir()
    port = free_port()
    service = Service(root / "svc", ANKISYNC_SYNC_ENDPOINT=sync_server.url,
                      ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                      ANKISYNC_ANKICONNECT_PATHS=str(allowed),
                      ANKISYNC_ANKICONNECT_URL_ALLOW=ALLOWED_HOST,
                      ANKISYNC_ANKICONNECT_URL_TIMEOUT=URL_TIMEOUT).start()
    wait_for_port(service, port)
    service.ac_port, service.allowed = port, allowed
    yield service
    service.kill()


def secrets_of(service):
    """Strings that must never come out of the door: the service's own secrets."""
    stored = json.loads((service.data_dir / "credentials.json").read_text())
    found = [value for value in stored.values() if isinstance(value, str) and len(value) > 8]
    assert found, stored  # the JWT secret at least
    return found + [service.api_key]


def media_folder(service):
    return service.data_dir / "collection.media"


def test_path_reads_only_the_folders_the_user_named(door, tmp_path):
    ac = Client(door.ac_port)
    credentials = door.data_dir / "credentials.json"
    (door.allowed / "to-secrets").symlink_to(credentials)
    (door.allowed / "to-data").symlink_to(door.data_dir)
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(PICTURE)
    attempts = [
        str(credentials),
        "/proc/self/environ",
        f"/proc/{os.getpid()}/environ",
        str(door.allowed / "to-secrets"),                       # symlink into the data dir
        str(door.allowed / "to-data" / "credentials.json"),    # through a symlinked folder
        f"{door.allowed}/../svc/credentials.json",              # .. out of the allowed folder
        f"{door.allowed}/../../{door.allowed.parent.name}/svc/.env",
        str(elsewhere),                                         # a folder nobody named
        "credentials.json",                                     # relative to the worker
        str(door.allowed / "cat.png\0"),                        # NUL byte
    ]
    missing = str(tmp_path / "no-such-file.png")
    refused_missing = ac.error("storeMediaFile", filename="x.png", path=missing)
    assert refused_missing.startswith(f"path is not allowed: {missing}")
    for number, path in enumerate(attempts):
        error = ac.error("storeMediaFile", filename=f"stolen{number}.txt", path=path)
        assert error.startswith("path is not allowed: "), (path, error)
        assert "ANKISYNC_ANKICONNECT_PATHS" in error
        # the same answer as for a file that does not exist: nothing tells existence
        assert error.replace(path, "P") == refused_missing.replace(missing, "P"), path
    # media of a note: the note is made (as in the add-on) with the refusal in its field
    note_id = ac("addNote", note=basic("path-attack", picture=[
        {"filename": "stolen-note.txt", "path": str(credentials), "fields": ["Back"]},
        {"filename": "stolen-env.txt", "path": "/proc/self/environ", "fields": ["Back"]}]))
    [info] = ac("notesInfo", notes=[note_id])
    assert info["fields"]["Back"]["value"].count("path is not allowed") == 2

    answers = json.dumps([ac("getMediaFilesNames", pattern="*"), info])
    for secret in secrets_of(door):
        assert secret not in answers
    assert not [name for name in os.listdir(media_folder(door)) if name.startswith("stolen")]
    assert ac("retrieveMediaFile", filename="stolen0.txt") is False

    # a file in the named folder works, also through a symlink that stays inside it
    (door.allowed / "cat.png").write_bytes(PICTURE)
    (door.allowed / "cat-link.png").symlink_to(door.allowed / "cat.png")
    assert ac("storeMediaFile", filename="allowed.png", path=str(door.allowed / "cat.png")) \
        == "allowed.png"
    assert ac("storeMediaFile", filename="linked.png",
              path=str(door.allowed / "cat-link.png")) == "linked.png"
    assert base64.b64decode(ac("retrieveMediaFile", filename="allowed.png")) == PICTURE
    assert (media_folder(door) / "linked.png").read_bytes() == PICTURE
    # inside the named folder the answer may say the file is missing, without OS text
    error = ac.error("storeMediaFile", filename="x.png", path=str(door.allowed / "nope.png"))
    assert error.startswith("cannot read ") and "Errno" not in error


def test_media_names_stay_in_the_media_folder(door):
    ac = Client(door.ac_port)
    credentials = door.data_dir / "credentials.json"
    before = credentials.read_bytes()
    ac("storeMediaFile", filename="keep.mp3", data=base64.b64encode(b"kept").decode())
    media = media_folder(door)
    (media / "inside-link.json").symlink_to(credentials)  # planted by whoever could write there
    names = ["../credentials.json", str(credentials), "credentials.json\0.png",
             "..", "", "inside-link.json", "../../" + credentials.name, "/proc/self/environ"]
    for name in names:
        assert ac("retrieveMediaFile", filename=name) is False, name
        ac.raw("deleteMediaFile", filename=name)
    assert credentials.read_bytes() == before
    assert ac("retrieveMediaFile", filename="keep.mp3") == base64.b64encode(b"kept").decode()
    ac("deleteMediaFile", filename="keep.mp3")
    assert ac("retrieveMediaFile", filename="keep.mp3") is False


class Site(BaseHTTPRequestHandler):
    """A small web site: a picture, redirects, a dripping answer, huge answers."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.server.seen.append(self.path)
        try:
            if self.path == "/cat.png":
                self._head(200, len(PICTURE))
                self.wfile.write(PICTURE)
            elif self.path.startswith("/to?"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/to?"):])
                self.end_headers()
            elif self.path == "/drip":  # a byte now and then, forever as far as we care
                self._head(200, 10_000)
                for _ in range(10_000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            elif self.path in ("/big", "/big-undeclared"):
                self._head(200, 33 * 2**20 if self.path == "/big" else None)
                for _ in range(34 * 16):
                    self.wfile.write(bytes(64 * 1024))
            else:
                self._head(404, 0)
        except OSError:  # the service hung up on us: what it should do
            self.server.cut.set()

    def _head(self, status, length):
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args):
        pass


def site(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("SiteServer", (ThreadingHTTPServer,), {"address_family": family,
                                                              "daemon_threads": True})
    server = server_class((host, 0), Site)
    server.seen, server.cut = [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    netloc = f"[{host}]" if ":" in host else host
    server.url = f"http://{netloc}:{server.server_address[1]}"
    return server


@pytest.fixture
def sites():
    """A site on 127.0.0.1 (loopback, refused), one on 127.0.0.5 (allowed), one on ::1."""
    servers = {"loopback": site("127.0.0.1"), "allowed": site(ALLOWED_HOST)}
    try:
        servers["v6"] = site("::1")
    except OSError:  # no IPv6 on this machine's loopback: the refusal is checked all the same
        pass
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


def test_url_reaches_only_public_or_allowed_hosts(door, sites):
    ac = Client(door.ac_port)
    loopback, allowed = sites["loopback"], sites["allowed"]
    v6 = sites["v6"].url if "v6" in sites else f"http://[::1]:{free_port()}"
    refused = {
        f"{loopback.url}/cat.png": "url is not allowed",
        f"http://localhost:{loopback.server_address[1]}/cat.png": "url is not allowed",
        f"{allowed.url}/to?{loopback.url}/cat.png": "url is not allowed",   # redirect to 127.0.0.1
        f"{allowed.url}/to?{v6}/cat.png": "url is not allowed",             # redirect to [::1]
        f"http://[::ffff:127.0.0.1]:{loopback.server_address[1]}/cat.png": "url is not allowed",
        "http://0.0.0.0/": "url is not allowed",
        f"file://{door.data_dir}/credentials.json": "is not an http:// or https:// URL",
        f"{allowed.url}/to?file:///etc/passwd": "is not an http:// or https:// URL",
    }
    for url, why in refused.items():
        error = ac.error("storeMediaFile", filename="fetched.png", url=url)
        assert why in error, (url, error)
    assert "ANKISYNC_ANKICONNECT_URL_ALLOW" in ac.error(
        "storeMediaFile", filename="fetched.png", url=f"{loopback.url}/cat.png")
    assert loopback.seen == [] and sites.get("v6", loopback).seen == []
    assert ac("retrieveMediaFile", filename="fetched.png") is False

    # the allowed host works, directly and through its own redirect
    assert ac("storeMediaFile", filename="direct.png", url=f"{allowed.url}/cat.png") \
        == "direct.png"
    assert ac("storeMediaFile", filename="moved.png",
              url=f"{allowed.url}/to?/cat.png") == "moved.png"
    assert (media_folder(door) / "moved.png").read_bytes() == PICTURE
    # and a note's picture by url, refused, leaves the refusal in the field
    note_id = ac("addNote", note=basic("url-attack", picture=[
        {"filename": "attack.png", "url": f"{loopback.url}/cat.png", "fields": ["Back"]}]))
    [info] = ac("notesInfo", notes=[note_id])
    assert "url is not allowed" in info["fields"]["Back"]["value"]
    assert loopback.seen == []


@pytest.mark.slow
def test_url_download_has_a_deadline_and_a_size_cap(door, sites):
    ac = Client(door.ac_port)
    allowed = sites["allowed"]
    began = time.monotonic()
    error = ac.error("storeMediaFile", filename="drip.bin", url=f"{allowed.url}/drip")
    took = time.monotonic() - began
    assert f"took longer than {URL_TIMEOUT} s" in error
    assert URL_TIMEOUT <= took < URL_TIMEOUT + 8  # a bound on a timeout firing, loosely
    assert allowed.cut.wait(10)  # the dripping server was hung up on
    for path in ("/big", "/big-undeclared"):
        error = ac.error("storeMediaFile", filename="big.bin", url=f"{allowed.url}{path}")
        assert "larger than 32 MB" in error, path
    # (the media folder exists only once something was stored: this test may run alone)
    assert not [name for name in ("drip.bin", "big.bin") if (media_folder(door) / name).exists()]


def run_as_nobody(port, request):
    """(status, body) of an AnkiConnect call from a process of user nobody (uid 65534)."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        f"req = urllib.request.Request('http://127.0.0.1:{port}/', data=sys.argv[1].encode())\n"
        "try:\n"
        "    answer = urllib.request.urlopen(req, timeout=30)\n"
        "    print(answer.status, answer.read().decode())\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code, error.read().decode())\n")
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         os.path.realpath(sys.executable), "-I", "-c", script, json.dumps(request)],
        capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.partition(" ")
    return int(status), json.loads(body)


needs_root = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv"),
    reason="running a client as another user needs root and setpriv (CI runs as root)")


@needs_root
def test_another_local_user_is_refused_without_a_key(door):
    request = {"action": "deckNames", "version": 6}
    status, body = run_as_nobody(door.ac_port, request)
    assert status == 403 and body["result"] is None
    assert "ANKISYNC_ANKICONNECT_KEY" in body["error"]
    assert "Default" in Client(door.ac_port)("deckNames")  # the same call from our user
    assert "socket belongs to uid 65534" in door.logs()


def test_oversized_or_refused_bodies_are_answered_before_they_are_sent(door):
    def head_only(headers):
        """Send the headers of a big POST and no body; the answer that comes anyway."""
        with socket.create_connection(("127.0.0.1", door.ac_port), timeout=10) as sock:
            sock.sendall(("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode())
            answer = b""
            while b"\r\n\r\n" not in answer:  # times out if the server waits for the body
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer

    answer = head_only({"Content-Length": 40 * 2**20, "Content-Type": "application/json"})
    assert answer.startswith(b"HTTP/1.0 413"), answer
    answer = head_only({"Content-Length": 10 * 2**20, "Origin": "https://evil.example"})
    assert answer.startswith(b"HTTP/1.0 403"), answer
    # a refused origin's small requestPermission still gets its "denied"
    status, _, body = call(door.ac_port, "requestPermission", origin="https://evil.example")
    assert status == 200 and body["result"] == {"permission": "denied"}


def test_big_bodies_are_served_a_few_at_a_time(door):
    def big_request(number):
        data = base64.b64encode(bytes([number]) * 1_200_000).decode()
        body = json.dumps({"action": "storeMediaFile", "version": 6,
                           "params": {"filename": f"big{number}.bin", "data": data}}).encode()
        head = f"POST / HTTP/1.0\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        return head + body

    requests = [big_request(number) for number in range(3)]
    clients = [socket.create_connection(("127.0.0.1", door.ac_port), timeout=30)
               for _ in requests]
    for sock, request in zip(clients, requests):  # headers and one byte: bodies still coming
        sock.sendall(request[:request.index(b"\r\n\r\n") + 5])
    wait_until(lambda: "waits: 2 big requests are being served" in door.logs(), door.logs)
    for sock, request in zip(clients, requests):
        sock.sendall(request[request.index(b"\r\n\r\n") + 5:])
    for number, sock in enumerate(clients):
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.0 200"), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
            "result": f"big{number}.bin", "error": None}


def test_client_hanging_up_mid_body_logs_one_short_line(door):
    with socket.create_connection(("127.0.0.1", door.ac_port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"action\":")
        # the client stops sending but still holds its socket: one no process
        # holds any more has no owner to ask (peer.py), and is refused
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: "hung up after 10 of 1000 bytes" in door.logs(), door.logs)
    assert "Traceback" not in door.logs()
    assert Client(door.ac_port)("version") == 6


@pytest.mark.slow
def test_wrong_keys_are_throttled_and_logged(make_service):
    port = free_port()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                           ANKISYNC_ANKICONNECT_KEY=STRONG_KEY, ANKISYNC_GOOGLE_API_KEY=None)
    wait_for_port(service, port)
    right, wrong = Client(port, STRONG_KEY), Client(port, "kiwi")
    assert right("version") == 6
    for _ in range(5):
        assert wrong.error("deckNames") == "valid api key must be provided"
    # locked out: even the right key gets the add-on's refusal for a while
    assert right.error("deckNames") == "valid api key must be provided"
    assert f"wrong key from 127.0.0.1 uid {os.getuid()}; refused for 2 s" in service.logs()
    if os.getuid() == 0 and shutil.which("setpriv"):
        # another local user with the key is its own caller: not locked out by ours
        status, body = run_as_nobody(port, {"action": "version", "version": 6,
                                            "key": STRONG_KEY})
        assert (status, body) == (200, {"result": 6, "error": None})
    wait_until(lambda: right.raw("version")["error"] is None, "the lockout to end", 15)


def test_weak_key_refused_when_listening_off_loopback(make_service):
    port = free_port()
    service = make_service(start=False, ANKISYNC_ANKICONNECT_LISTEN=f"0.0.0.0:{port}",
                           ANKISYNC_ANKICONNECT_KEY="kiwi")
    result = service.cli("status")
    assert result.returncode == 1
    assert "ANKISYNC_ANKICONNECT_KEY" in result.stderr and "too weak" in result.stderr
    assert "openssl rand" in result.stderr and "kiwi" not in result.stderr
    service.env["ANKISYNC_ANKICONNECT_KEY"] = "aaaaaaaaaaaaaaaaaaaaaaaa"  # long, one letter
    assert "too weak" in service.cli("status").stderr
    service.env["ANKISYNC_ANKICONNECT_KEY"] = STRONG_KEY
    assert "too weak" not in service.cli("status").stderr


def health(service):
    status, _, body = service.call("GET", "/api/v1/health")
    assert status == 200, body
    return body


def test_port_held_by_another_program_shows_in_health_and_status(make_service):
    port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", port))
    busy.listen()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}",
                           ANKISYNC_GOOGLE_API_KEY=None)
    held = f"AnkiConnect port 127.0.0.1:{port} is held by another program"
    wait_until(lambda: health(service)["ankiconnect"]["state"] == "held", service.logs)
    body = health(service)
    assert body["status"] == "degraded"
    assert body["problems"][0].startswith(held)
    assert body["worker"]["alive"] is True
    status = service.cli("status")
    assert held in status.stdout, status.stdout

    # the next run, with the port free: the "held" of the last run never shows
    service.stop()
    busy.close()
    service.start()
    seen, deadline = [], time.monotonic() + 30
    while not seen or seen[-1] != "listening":
        assert time.monotonic() < deadline, (seen, service.logs())
        body = health(service)
        seen.append(body["ankiconnect"]["state"])
    assert "held" not in seen
    assert body["status"] == "ok" and body["problems"] == []
    assert Client(port)("version") == 6
    assert "on http://127.0.0.1" in service.cli("status").stdout
