"""A JSON webhook on 127.0.0.1 that receives alerts, as a user's ntfy or Gotify would.

Apprise's `json://USER:PASSWORD@127.0.0.1:PORT/PATH` posts
`{"version", "title", "message", "type", ...}` with basic auth; this receiver
keeps each message, and can refuse them (`status = 500`) or hold them unanswered
until released (`hold()`, `release()`), like a notifier that hangs.
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    def __init__(self, user="alerts", password="s3cret-webhook-pass"):
        self.user, self.password = user, password
        self.status = 200
        self.messages = []  # {"title", "message", "path", "user"}, each one received
        self.attempts = 0  # requests received, refused ones included
        self.held = 0  # requests waiting at the hold right now
        self._gate = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # the client gave up
        self.port = self._server.server_address[1]

    def url(self, path="hook"):
        return f"json://{self.user}:{self.password}@127.0.0.1:{self.port}/{path}"

    def hold(self):
        self._gate = threading.Event()

    def release(self):
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    def titles(self):
        with self._lock:
            return [message["title"] for message in self.messages]

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self.release()
        self._server.shutdown()
        self._server.server_close()


def _handler(hook):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            credentials = self.headers.get("Authorization", "").removeprefix("Basic ")
            user = base64.b64decode(credentials).decode().partition(":")[0] if credentials else None
            with hook._lock:
                hook.attempts += 1
            gate = hook._gate
            if gate is not None:
                with hook._lock:
                    hook.held += 1
                gate.wait(60)
                with hook._lock:
                    hook.held -= 1
            if hook.status == 200:
                with hook._lock:
                    hook.messages.append({"title": body.get("title"), "path": self.path,
                                          "message": body.get("message"), "user": user})
            self.send_response(hook.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler
