"""AnkiConnect's HTTP transport: the socket server, CORS as the add-on does it,
who may call, request bodies, the wrong-key throttle and the reply's shape.

A small ThreadingHTTPServer on a daemon thread of the worker process; each
request's decoded body goes to the dispatcher (dispatch.handle) with the
server's Context: the Worker and a way to queue a sync, given to start().

Without a key only the user running ankisync may call: the kernel says who
owns the caller's socket.
"""

import errno
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import config
import db
import throttle
from ankiconnect.dispatch import API_VERSION, Context, handle, key_ok, schema_error
from ankiconnect.peer import peer_uid

log = logging.getLogger(__name__)

# The add-on has no limit; 32 MB is the base64 of a 24 MB file, far above the
# audio clips and pictures clients send. A body costs about three times its size
# while parsed and decoded, so big ones are also served only BIG_AT_ONCE at a
# time (eight 64 MB bodies at once took the worker to 1.7 GB).
MAX_BODY = 32 * 1024 * 1024
BIG_BODY = 1024 * 1024            # bodies above this are served BIG_AT_ONCE at a time
BIG_AT_ONCE = 2
MAX_REFUSED_BODY = 64 * 1024      # a refused origin's body is read only to answer requestPermission
READ_TIMEOUT = 30                 # seconds a client may stay silent mid-request


# The add-on lets these in without asking whenever "http://localhost" is in its list
# (its default): a page of 127.0.0.1 and any browser extension. Not "localhost:3000":
# the add-on matches that name only exactly.
_WITH_LOCALHOST = ("http://127.0.0.1:", "chrome-extension://", "moz-extension://",
                   "safari-web-extension://")


def origin_allowed(origin, allowlist):
    """Whether a browser origin may call, by the add-on's rule.

    No Origin header (curl, scripts) or "*" in the list: yes. Else the origin must be
    in the list, or be one the add-on lets in when "http://localhost" is. Ours adds one
    thing for lists written for ankisync: an entry ending in "*" matches by prefix.
    """
    if origin is None or "*" in allowlist:
        return True
    for entry in allowlist:
        if entry == origin or entry.endswith("*") and origin.startswith(entry[:-1]):
            return True
    if "http://localhost" in allowlist:
        return (origin in ("http://127.0.0.1", "https://127.0.0.1")
                or origin.startswith(_WITH_LOCALHOST))
    return False


def _is_loopback(address):
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


class Server(ThreadingHTTPServer):
    """The listening socket; it also holds the wrong-key throttle of this server."""

    daemon_threads = True

    def __init__(self, address, handler, context):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.context, self.settings = context, context.settings
        self.keys = throttle.Throttle()  # failed keys per address (per user on loopback)
        self.big_bodies = threading.BoundedSemaphore(BIG_AT_ONCE)

    def handle_error(self, request, client_address):
        # one short line for a client gone mid-request, a traceback for the rest
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.info("AnkiConnect: %s hung up (%s)", client_address[0], type(error).__name__)
        else:
            log.exception("AnkiConnect: request from %s failed", client_address[0])

    def stop(self):
        """Stop serving, before the worker closes the collection (a worker shutdown hook)."""
        self.context.open = False  # a late action never reopens the collection
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    """One HTTP request to the AnkiConnect port."""

    timeout = READ_TIMEOUT  # a client that stops sending frees its thread

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
        log.debug("AnkiConnect %s: " + format, self.client_address[0], *args)

    def _cors(self):
        origin = self.headers.get("Origin")
        allowlist = self.server.settings.ankiconnect_origins
        allowed = origin_allowed(origin, allowlist)
        if "*" in allowlist:
            shown = "*"
        else:
            shown = origin if allowed and origin else "http://localhost"
        return allowed, origin, shown

    def _send(self, status, body, allow_origin, content_type="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", allow_origin)
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
        self.send_header("Vary", "Origin")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status, error, allow_origin):
        """Answer without reading the body, and hang up."""
        self.close_connection = True
        body = b"" if error is None else json.dumps({"result": None, "error": error}).encode()
        self._send(status, body, allow_origin)

    def _caller(self):
        """(throttle unit, refusal or None): who is calling, and whether they may.

        With no key, only this user's own programs on this machine may call:
        another local user (or a process we cannot place) is refused. With a key,
        the key decides, and wrong keys are counted per address, per user on
        loopback so that another local user cannot lock this user out.
        """
        address = self.client_address[0]
        settings = self.server.settings
        local = _is_loopback(address)
        uid = None
        if local or not settings.ankiconnect_key:
            uid = peer_uid(self.connection, self.client_address)
        if settings.ankiconnect_key:
            unit = f"{address} uid {uid}" if local else throttle.client({"REMOTE_ADDR": address})
            return unit, None
        if uid == os.getuid():
            return address, None
        log.warning("AnkiConnect: refused %s:%s: its socket belongs to %s, not to the user"
                    " running ankisync (uid %s); set ANKISYNC_ANKICONNECT_KEY to let it in"
                    " with the key", address, self.client_address[1],
                    "an unknown user" if uid is None else f"uid {uid}", os.getuid())
        return address, ("AnkiConnect here answers only programs of the user running"
                         " ankisync: set ANKISYNC_ANKICONNECT_KEY and send it as \"key\"")

    def _body(self, length):
        """The body, read in pieces; None when the client hung up before its end."""
        body = bytearray()
        try:
            while len(body) < length:
                chunk = self.rfile.read(min(length - len(body), 1024 * 1024))
                if not chunk:
                    break
                body += chunk
        except OSError as error:  # reset, or silent for READ_TIMEOUT
            log.info("AnkiConnect: %s hung up mid-request (%s)", self.client_address[0],
                     type(error).__name__)
            self.close_connection = True
            return None
        if len(body) < length:
            log.info("AnkiConnect: %s hung up after %d of %d bytes", self.client_address[0],
                     len(body), length)
            self.close_connection = True
            return None
        return body  # json.loads takes a bytearray: no second copy

    def do_OPTIONS(self):
        allowed, _, shown = self._cors()
        extra = []
        if allowed and self.headers.get("Access-Control-Request-Private-Network") == "true":
            # lets a page on a public origin in the allowlist reach this local port
            extra.append(("Access-Control-Allow-Private-Network", "true"))
        self._send(200, b"", shown, extra=extra)

    def do_POST(self):
        # everything that can refuse without the body does so before reading it
        allowed, origin, shown = self._cors()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return self._refuse(413, f"request body too large (over {MAX_BODY // 2**20} MB)", shown)
        if not allowed and length > MAX_REFUSED_BODY:
            log.info("AnkiConnect: refused origin %s (ANKISYNC_ANKICONNECT_ORIGINS)", origin)
            return self._refuse(403, None, shown)
        unit, refusal = self._caller()
        if refusal:
            return self._refuse(403, refusal, shown)
        if self.server.settings.ankiconnect_key and self.server.keys.wait(unit):
            return self._refuse(200, "valid api key must be provided", shown)
        if length <= BIG_BODY:
            return self._answer(length, unit, allowed, origin, shown)
        # big bodies a few at a time: each costs several times its size in memory
        big = self.server.big_bodies
        if not big.acquire(blocking=False):
            log.info("AnkiConnect: %s waits: %d big requests are being served",
                     self.client_address[0], BIG_AT_ONCE)
            if not big.acquire(timeout=READ_TIMEOUT):
                return self._refuse(503, "busy: too many large requests at once; try again", shown)
        try:
            self._answer(length, unit, allowed, origin, shown)
        finally:
            big.release()

    def _answer(self, length, unit, allowed, origin, shown):
        """Read the body and answer it."""
        keys = self.server.keys
        body = self._body(length)
        if body is None:
            return
        if not body:
            if not allowed:
                return self._send(403, b"", shown)
            # what a browser at http://127.0.0.1:8765 shows, and clients probe for
            return self._send(200, json.dumps({"apiVersion": f"AnkiConnect v.{API_VERSION}"})
                              .encode(), shown)
        try:
            # decoded first as the add-on does, for its error texts (and no UTF-16 guessing)
            request = json.loads(body.decode("utf-8"))
            problem = schema_error(request)
        except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
            request, problem = None, str(error)
        if problem is not None:
            if not allowed:
                return self._send(403, b"", shown)
            reply = {"result": None, "error": problem}
            return self._send(200, json.dumps(reply).encode(), shown)
        asks_permission = isinstance(request, dict) and request.get("action") == "requestPermission"
        if not allowed and not asks_permission:
            log.info("AnkiConnect: refused origin %s (ANKISYNC_ANKICONNECT_ORIGINS)", origin)
            return self._send(403, b"", shown)
        settings = self.server.settings
        if settings.ankiconnect_key and isinstance(request, dict) and not asks_permission:
            # counted here, once a request: multi checks the key before its parts run
            if key_ok(settings, request.get("key")):
                keys.succeeded(unit)
            else:
                lockout = keys.failed(unit)
                log.warning("AnkiConnect: wrong key from %s%s", unit,
                            f"; refused for {lockout:g} s" if lockout else "")
        reply = handle(self.server.context, request, allowed, origin or "")
        # a refused origin may still read its "denied"
        self._send(200, json.dumps(reply).encode(), shown if allowed else origin)

    do_GET = do_POST

    def handle_one_request(self):
        # the error boundary of this thread: a fault is logged, never a traceback sent
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as error:
            log.info("AnkiConnect: %s hung up (%s)", self.client_address[0], type(error).__name__)
            self.close_connection = True
        except Exception:
            log.exception("AnkiConnect: request from %s failed", self.client_address[0])
            self.close_connection = True


def _record(settings, state, problem=None):
    """What health and `status` show about AnkiConnect; tied to this worker's pid, so a
    state left by an earlier run is never taken for the current one."""
    host, port = settings.ankiconnect_listen
    db.set_state(config.db_path(settings), ankiconnect=json.dumps({
        "state": state, "listen": f"{host}:{port}", "problem": problem,
        "pid": os.getpid(), "worker": os.getppid()}))


def start(worker, queue_sync):
    """Serve AnkiConnect on a daemon thread; the server (stop() it), or None when it cannot.

    worker: the process's worker.Worker; queue_sync(): queue one sync.
    """
    settings = worker.settings
    host, port = settings.ankiconnect_listen  # off loopback, config made sure of a key
    try:
        server = Server((host, port), Handler, Context(worker, queue_sync))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            problem = (f"AnkiConnect port {host}:{port} is held by another program: clients'"
                       " notes and key go to it, not to ankisync. Stop it (Anki desktop with the"
                       " AnkiConnect add-on?) or set ANKISYNC_ANKICONNECT_LISTEN to another"
                       " port (or empty to turn AnkiConnect off), then restart ankisync")
            state = "held"
        else:
            problem = (f"AnkiConnect cannot listen on {host}:{port}"
                       f" ({error.strerror or error}): fix ANKISYNC_ANKICONNECT_LISTEN")
            state = "failed"
        log.warning("%s", problem)
        _record(settings, state, problem)
        return None
    threading.Thread(target=server.serve_forever, name="ankiconnect", daemon=True).start()
    _record(settings, "listening")
    log.info("AnkiConnect on http://%s:%s (%s)", host, port,
             "key required" if settings.ankiconnect_key
             else "no key: only programs of this user on this machine may call it")
    return server
