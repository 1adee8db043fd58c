"""Local stand-ins for the REST speech services, checking what the real ones check.

FakeOpenAI speaks `POST /v1/audio/speech` as OpenAI documents it (and as
Kokoro-FastAPI, openedai-speech and LocalAI copy it): a bearer key, a JSON body
with model, input, voice, response_format and speed in their ranges, OpenAI's
`{"error": {...}}` answers. FakeAzure speaks Azure Speech's
`POST /cognitiveservices/v1`: the subscription key header, an SSML body that must be
well-formed XML in the synthesis namespace naming a known voice, the output format
and User-Agent headers, Azure's 401/415/400 answers. Both record each request, can
fail the next ones with any status (429 with Retry-After), answer 429 at once to each
request that comes while more than K are in flight (busy_over), count the requests in
flight (in_flight, max_in_flight), and can hold their answers until released (a hang,
for timeouts) without being slow.
"""

import io
import json
import threading
import time
import urllib.parse
import wave
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler

from fake_tts import SILENT_MP3, Answers, Server


def _silent_wav():
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(3200))  # 0.1 s of silence
    return out.getvalue()


SILENT_WAV = _silent_wav()
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
AZURE_FORMATS = {"audio-24khz-48kbitrate-mono-mp3", "audio-16khz-32kbitrate-mono-mp3",
                 "audio-24khz-96kbitrate-mono-mp3", "riff-24khz-16bit-mono-pcm"}


class FakeSpeech(Answers):
    """What both fakes share: the server thread, the record, failures and holds."""

    def __init__(self, *, valid_keys=None, voices=None):
        super().__init__()
        self.valid_keys = valid_keys  # None: no key checked
        self.voices = voices  # None: any voice
        self.requests = []  # {"method", "path", "headers" (lower-case names), "body", ...}
        # or "chunked" (MP3 streamed in pieces, as Kokoro-FastAPI answers by default),
        # "wav" (as LocalAI answers), "json" (200, not audio), "flood" (MP3 without
        # end or length), "trickle" (a byte every 0.2 s: each read succeeds, none ends)
        self.answer_as = "mp3"
        self.redirect_to = None  # the Location of a 3xx answer asked for with fail_next
        self._failures = []  # (status, retry_after) of the next requests
        self._server = Server(("127.0.0.1", 0), _make_handler(self))
        self._server.handle_error = lambda request, address: None  # clients that gave up
        self._thread = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def fail_next(self, n, status, retry_after=None):
        """The next n requests answer status (with a Retry-After header if given)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def reset(self):
        with self._lock:
            self.requests.clear()
            self._failures.clear()
            self.answer_as = "mp3"
            self._forget_counts()
        self.release()

    def start(self):
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

    def _handle(self, method, path, headers, raw):
        """(status, headers, body) for one request, recorded first."""
        seen = {"method": method, "path": path, "headers": headers, "raw": raw}
        with self._lock:
            self.requests.append(seen)
            failure = self._failures.pop(0) if self._failures else None
            busy = self._busy()
            failure = busy or failure
        status, extra, body = self.check(seen)
        if status == 200 and failure:
            status, retry_after = failure
            extra, body = self.error(status, f"fake failure {status}")
            if retry_after is not None:
                extra["Retry-After"] = str(retry_after)
            if 300 <= status < 400:
                extra["Location"] = self.redirect_to
        elif status == 200:
            extra, body = self._audio()
        seen["status"] = status
        self._wait_if_held(busy is not None and status == 429)
        return status, extra, body

    def _audio(self):
        if self.answer_as in ("flood", "trickle", "chunked"):
            return {"Content-Type": "audio/mpeg"}, self.answer_as
        if self.answer_as == "wav":
            return {"Content-Type": "audio/wav"}, SILENT_WAV
        if self.answer_as == "json":
            return {"Content-Type": "application/json"}, b'{"status": "queued"}'
        return {"Content-Type": "audio/mpeg"}, SILENT_MP3

    def spoken(self):
        """What the requests answered with audio asked to say, in order."""
        return [r["text"] for r in self.requests if r.get("status") == 200]


class FakeOpenAI(FakeSpeech):
    """POST /v1/audio/speech as OpenAI checks it."""

    FORMATS = {"mp3", "opus", "aac", "flac", "wav", "pcm"}

    def error(self, status, message, code=None, param=None):
        kind = {401: "invalid_request_error", 429: "requests", 404: "invalid_request_error",
                400: "invalid_request_error"}.get(status, "server_error")
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        return {"Content-Type": "application/json"}, json.dumps(body).encode()

    def check(self, seen):
        if seen["path"] != "/v1/audio/speech":
            return (404, *self.error(404, f"Invalid URL ({seen['method']} {seen['path']})"))
        if seen["method"] != "POST":
            return (405, *self.error(405, "Method not allowed"))
        auth = seen["headers"].get("authorization")
        if self.valid_keys is not None:
            if not auth:
                return (401, *self.error(401, "You didn't provide an API key. You need to"
                                              " provide your API key in an Authorization header"
                                              " using Bearer auth."))
            scheme, _, key = auth.partition(" ")
            if scheme != "Bearer" or key not in self.valid_keys:
                shown = key[:3] + "*" * 4 + key[-2:]
                return (401, *self.error(401, f"Incorrect API key provided: {shown}.",
                                         code="invalid_api_key"))
        if not seen["headers"].get("content-type", "").startswith("application/json"):
            return (400, *self.error(400, "We could not parse the JSON body of your request."))
        try:
            body = json.loads(seen["raw"])
        except ValueError:
            return (400, *self.error(400, "We could not parse the JSON body of your request."))
        seen["body"] = body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return (400, *self.error(400, "you must provide a model parameter", param="model"))
        text = body.get("input")
        if not isinstance(text, str) or not text or len(text) > 4096:
            return (400, *self.error(400, "input: a string of 1 to 4096 characters",
                                     param="input"))
        if not isinstance(body.get("voice"), str) or (self.voices is not None
                                                      and body["voice"] not in self.voices):
            return (400, *self.error(400, f"Invalid value for 'voice': {body.get('voice')!r}",
                                     param="voice"))
        if body.get("response_format", "mp3") not in self.FORMATS:
            return (400, *self.error(400, "Invalid value for 'response_format'",
                                     param="response_format"))
        speed = body.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            return (400, *self.error(400, f"{speed} is not between 0.25 and 4.0",
                                     param="speed"))
        unknown = set(body) - {"model", "input", "voice", "response_format", "speed",
                               "instructions"}
        if unknown:
            return (400, *self.error(400, f"Unrecognized request argument supplied: {unknown}"))
        seen["text"] = text
        return 200, {}, b""


class FakeAzure(FakeSpeech):
    """POST /cognitiveservices/v1 as Azure Speech checks it."""

    def error(self, status, message):
        if status == 401:
            message = ("Access denied due to invalid subscription key or wrong API endpoint."
                       " Make sure to provide a valid key for an active subscription and use a"
                       " correct regional API endpoint for your resource.")
        body = {"error": {"code": str(status), "message": message}}
        return {"Content-Type": "application/json"}, json.dumps(body).encode()

    def check(self, seen):
        headers = seen["headers"]
        if seen["path"] != "/cognitiveservices/v1" or seen["method"] != "POST":
            return 404, {}, b""
        if self.valid_keys is not None and headers.get("ocp-apim-subscription-key") \
                not in self.valid_keys:
            return (401, *self.error(401, ""))
        if headers.get("content-type", "").split(";")[0].strip() != "application/ssml+xml":
            return 415, {}, b""
        if headers.get("x-microsoft-outputformat") not in AZURE_FORMATS:
            return (400, *self.error(400, "unsupported X-Microsoft-OutputFormat"))
        if not headers.get("user-agent"):
            return (400, *self.error(400, "User-Agent header is required"))
        try:
            root = ET.fromstring(seen["raw"])
        except ET.ParseError as error:
            return (400, *self.error(400, f"SSML is not well-formed XML: {error}"))
        voice = root.find(f"{SSML_NS}voice")
        if root.tag != f"{SSML_NS}speak" or root.get("version") != "1.0" \
                or not root.get(XML_LANG) or voice is None or not voice.get("name"):
            return (400, *self.error(400, "SSML needs <speak version='1.0' xml:lang=..."
                                          " xmlns=synthesis> and a <voice name=...>"))
        if self.voices is not None and voice.get("name") not in self.voices:
            return (400, *self.error(400, f"unsupported voice {voice.get('name')}"))
        text = "".join(voice.itertext()).strip()
        if not text:
            return (400, *self.error(400, "nothing to speak"))
        prosody = voice.find(f"{SSML_NS}prosody")
        seen.update(text=text, voice=voice.get("name"), language=root.get(XML_LANG),
                    rate=prosody.get("rate") if prosody is not None else None)
        return 200, {}, b""


def _make_handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _serve(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            path = urllib.parse.urlsplit(self.path).path
            fake._arrive()
            status = None
            try:
                status, extra, body = fake._handle(self.command, path, headers, raw)
            finally:
                fake._leave(status)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            if body == "flood":  # no length: the client must stop reading by itself
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self._write_until_refused(SILENT_MP3, [bytes(64 * 1024)] * 640)  # 40 MB
                return
            if body == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(SILENT_MP3), 100):
                    piece = SILENT_MP3[start:start + 100]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                return
            if body == "trickle":
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.close_connection = True
                self._write_until_refused(SILENT_MP3[:4], [b"\0"] * 100, pause=0.2)
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _write_until_refused(self, first, pieces, pause=0.0):
            try:
                self.wfile.write(first)
                for piece in pieces:
                    self.wfile.flush()
                    if pause:
                        time.sleep(pause)  # the trickle itself: what this mode is
                    self.wfile.write(piece)
            except OSError:
                pass  # the client gave up, as it should

        do_POST = do_GET = do_PUT = _serve

        def log_message(self, format, *args):
            pass

    return Handler
