"""A proxy in front of the Anki sync server that fails, holds or orders requests."""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class SyncProxy:
    """Passes requests on to the sync server, and fails the ones it is told to.

    answers maps a request path ("/sync/meta", "/sync/upload") to an iterator of
    "pass", "fail", "hold", "pause" or "after PATH" for its next requests; a failed
    one gets a 500, a held one waits for release() (holding is set meanwhile), then
    fails; a paused one is held the same way, then passed on; one "after PATH" is
    passed on once a request for PATH has come (seen holds it), or after
    after_timeout (20) s.
    seen: the paths of the requests, in the order they came.
    """

    def __init__(self, target):
        self.target = urlsplit(target)
        self.answers = {}
        self.seen = []
        self.arrived = threading.Condition()
        self.after_timeout = 20  # seconds an "after PATH" request waits at most
        self.holding, self.released = threading.Event(), threading.Event()
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self._body()
                with proxy.arrived:
                    proxy.seen.append(self.path)
                    proxy.arrived.notify_all()
                answer = next(proxy.answers.get(self.path, iter(())), "pass")
                if answer.startswith("after "):
                    with proxy.arrived:
                        proxy.arrived.wait_for(lambda: answer[6:] in proxy.seen,
                                              timeout=proxy.after_timeout)
                    answer = "pass"
                if answer in ("hold", "pause"):
                    proxy.holding.set()
                    proxy.released.wait(60)
                if answer not in ("pass", "pause"):
                    self._answer(500, [], b"proxy: failed on purpose")
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port,
                                                  timeout=60)
                try:
                    headers = {name: value for name, value in self.headers.items()
                               if name.lower() not in ("host", "connection", "content-length",
                                                       "transfer-encoding")}
                    conn.request("POST", self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    self._answer(answer.status, answer.getheaders(), answer.read())
                finally:
                    conn.close()

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []  # Anki's client sends its bodies chunked
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)

            def _answer(self, status, headers, body):
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("connection", "content-length",
                                            "transfer-encoding", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def release(self):
        self.released.set()

    def __exit__(self, *exc_info):
        self.release()
        self.server.shutdown()
        self.server.server_close()
