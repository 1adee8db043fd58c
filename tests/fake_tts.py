"""A local stand-in for Google's text-to-speech REST endpoint, for tests and benchmarks.

It answers `POST /v1/text:synthesize` the way Google does, so the real
`google-cloud-texttospeech` client (transport "rest", api_endpoint
http://127.0.0.1:PORT) can be pointed at it. Tests can make it fail or be slow at
any moment, answer 200 with a broken body ("bad_json", "bad_base64", "html"), or
hold every answer until released (hold(), wait_held(), release()), which keeps
the worker in a known state without making anything slow. It counts the requests
in flight (in_flight, max_in_flight) and can answer 429 RESOURCE_EXHAUSTED, as
Google does past its quota, to the next N (fail_next) or to every request that
comes while more than K are in flight (busy_over). Run it alone for benchmarks:

    python tests/fake_tts.py --port 8099 --delay 0.2
"""

import argparse
import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# MPEG-1 Layer III, 32 kbit/s, 44.1 kHz, no CRC, no padding, mono: a frame is
# 144 * 32000 / 44100 = 104 bytes. A zeroed body after the header is valid side
# info (main_data_begin 0, no granule data), which decoders play as silence.
FRAME_HEADER = bytes([0xFF, 0xFB, 0x10, 0xC0])
FRAME_BYTES = 104
SILENT_MP3 = (FRAME_HEADER + bytes(FRAME_BYTES - len(FRAME_HEADER))) * 10  # ~0.26 s

# Google's canonical status names for the HTTP codes a test is likely to ask for.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class Server(ThreadingHTTPServer):
    """A threading HTTP server whose listen queue takes a burst: with socketserver's 5,
    a sixth client at once waits a second for its SYN to be sent again."""
    daemon_threads = True
    request_queue_size = 256


class Answers:
    """What every fake speech server does with its requests' answers, besides the
    answers themselves: hold them until released (a server that hangs), count those in
    flight, and answer 429 while too many are (a server that says it is busy)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.in_flight = 0  # requests arrived and not yet being answered
        self.max_in_flight = 0
        self.rate_limited = 0  # 429s answered
        self._busy_over = None  # (K, retry_after): 429 at once while more than K in flight
        self._gate = None  # while holding: the Event that releases the requests held
        self._held = threading.Semaphore(0)  # one release per request that reached the hold

    def busy_over(self, k, retry_after=None):
        """Answer 429 at once (never held) to each request that comes while more than k
        are in flight, itself included; None: never."""
        with self._lock:
            self._busy_over = None if k is None else (k, retry_after)

    def hold(self):
        """Hold every answer from now on until release(); requests still arrive."""
        with self._lock:
            self._held = threading.Semaphore(0)
            self._gate = threading.Event()

    def wait_held(self, timeout=30):
        """Wait until a request is being held (one call per held request)."""
        if not self._held.acquire(timeout=timeout):
            raise TimeoutError("no request reached the held fake")

    def release(self, hold_again=False):
        """Answer the held requests; later ones are answered at once until the next hold(),
        or, with hold_again, held in their turn (counted afresh by wait_held)."""
        with self._lock:
            gate, self._gate = self._gate, None
            if hold_again:
                self._held = threading.Semaphore(0)
                self._gate = threading.Event()
        if gate is not None:
            gate.set()

    def _forget_counts(self):
        """For reset(), with the lock held."""
        self.max_in_flight = self.rate_limited = 0
        self._busy_over = None

    def _arrive(self):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _busy(self):
        """(429, retry_after) when more are in flight than busy_over allows, else None;
        with the lock held."""
        if self._busy_over and self.in_flight > self._busy_over[0]:
            return 429, self._busy_over[1]
        return None

    def _wait_if_held(self, busy):
        """Hold this answer while holding; never a busy 429, which is answered at once."""
        with self._lock:
            gate, held = self._gate, self._held
        if gate is not None and not busy:
            held.release()
            gate.wait(120)  # bounded: a forgotten release() cannot hang a test run

    def _leave(self, status):
        # Counted out before the answer is sent: the client, once answered, may send
        # its next request before this thread runs again.
        with self._lock:
            self.in_flight -= 1
            self.rate_limited += status == 429


class FakeTTS(Answers):
    """A Google TTS endpoint on 127.0.0.1 served from a daemon thread."""

    def __init__(self, port=0, *, delay=0.0, status=200, valid_keys=None):
        super().__init__()
        self.status = status
        self.delay = delay
        self.valid_keys = valid_keys
        self.audio = SILENT_MP3
        self.requests = []  # {"body": dict, "key": str | None, "path": str}
        self._failures = []  # (status or broken-answer mode, retry_after) of the next requests
        self._server = Server(("127.0.0.1", port), _make_handler(self))
        # A client that gave up (timeout) closes its socket before a slow answer.
        self._server.handle_error = lambda request, address: None
        self._thread = None

    @property
    def url(self):
        """The base URL to give the client as api_endpoint."""
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def fail_next(self, n, status, retry_after=None):
        """Make the next n requests fail with status, then succeed again.

        status is an HTTP status, or one of BROKEN: a 200 whose body is not
        JSON ("bad_json"), whose audio is not base64 ("bad_base64"), or a
        proxy's HTML page ("html"). retry_after (seconds): a 429's RetryInfo
        detail, as Google gives it ("retryDelay": "1.5s").
        """
        assert status in BROKEN or isinstance(status, int), status
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def reset(self):
        """Answer normally again, forgetting requests seen and failures asked for."""
        with self._lock:
            self.status, self.delay = 200, 0.0
            self.requests.clear()
            self._failures.clear()
            self._forget_counts()
        self.release()

    def start(self):
        # A short poll keeps stop() (and so each test's teardown) fast.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _answer(self, key, body, path):
        """Record one request and decide (status, payload) for it."""
        with self._lock:
            self.requests.append({"body": body, "key": key, "path": path})
            failure, retry_after = self._failures.pop(0) if self._failures else (None, None)
            failure, retry_after = self._busy() or (failure, retry_after)
        if path != "/v1/text:synthesize":
            return 404, _error(404, "Method not found.")
        if self.valid_keys is not None and key not in self.valid_keys:
            # Google itself answers a bad key with 400 INVALID_ARGUMENT and reason
            # API_KEY_INVALID; 403 is what the tests here ask for.
            return 403, _error(403, "API key not valid. Please pass a valid API key.",
                               reason="API_KEY_INVALID")
        status = failure or self.status
        if status in BROKEN:
            return 200, status
        if status == 429:  # Google's words past the quota, and how long to wait if given
            return 429, _error(429, "Quota exceeded for quota metric 'Requests' and limit"
                               " 'Requests per minute' of service 'texttospeech.googleapis.com'",
                               reason="RATE_LIMIT_EXCEEDED", retry_after=retry_after)
        if status != 200:
            return status, _error(status, "fake failure %d" % status)
        if not isinstance(body, dict) or not body.get("input", {}).get("text"):
            return 400, _error(400, "Either `input.text` or `input.ssml` is required.")
        return 200, {"audioContent": base64.b64encode(self.audio).decode("ascii")}


BROKEN = {  # 200 answers whose body no client can use, as a faulty proxy or server sends
    "bad_json": b'{"audioContent": "//uQx',
    "bad_base64": b'{"audioContent": "not base64 at all!"}',
    "html": b"<!DOCTYPE html><html><body><h1>Service Unavailable</h1></body></html>",
}


def _error(code, message, reason=None, retry_after=None):
    error = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": reason, "domain": "googleapis.com"}]
    if retry_after is not None:
        error.setdefault("details", []).append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"})
    return {"error": error}


def _make_handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the requests session expects
        # Headers and body go out in separate writes; with Nagle on, the second
        # waits for the client's delayed ACK and every answer takes 40 ms more.
        disable_nagle_algorithm = True

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            key = (urllib.parse.parse_qs(url.query).get("key", [None])[0]
                   or self.headers.get("x-goog-api-key"))
            fake._arrive()
            status = None
            try:
                status, payload = fake._answer(key, body, url.path)
                fake._wait_if_held(status == 429 and fake._busy_over is not None)
                if fake.delay:
                    time.sleep(fake.delay)
            finally:
                fake._leave(status)
            broken = isinstance(payload, str)  # a BROKEN mode's name
            data = BROKEN[payload] if broken else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "text/html; charset=UTF-8" if payload == "html"
                             else "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):
            pass  # tests and benchmarks want quiet output

    return Handler


def main():
    parser = argparse.ArgumentParser(description="Serve a fake Google TTS endpoint.")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--status", type=int, default=200, help="HTTP status to answer")
    args = parser.parse_args()
    fake = FakeTTS(args.port, delay=args.delay, status=args.status)
    print(fake.url, flush=True)  # benchmarks read the address from the first line
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
