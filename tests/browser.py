"""A real headless Chromium (Debian's `chromium`) for tests where what the browser
allows is the point: CORS, and what a page of another origin can do to the API.

A test serves one page from a loopback address of its choosing (its own origin),
whose script makes the requests and writes what it saw into the DOM as JSON;
Chromium loads it with --dump-dom and the test reads that JSON back.
"""

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PAGE = """<!doctype html><html><body><pre id="out">not run</pre><script>
const out = document.getElementById("out");
(async () => {{ {script} }})().then(
  result => {{ out.textContent = JSON.stringify(result); }},
  error => {{ out.textContent = JSON.stringify({{"pageError": String(error)}}); }});
</script></body></html>"""


def chromium():
    """The chromium binary; skip without it, except in CI, where that is a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message + "; CI runs these tests")
    return path


class Page:
    """One HTML page, served from http://HOST:PORT/ on a loopback address: an origin of
    its own. `script` is the body of an async function whose result the page shows; it
    may be set after the origin is known (to configure the service with it)."""

    def __init__(self, script="", host="127.0.0.5"):
        self.script = script
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = PAGE.format(script=page.script).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.origin = f"http://{host}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def run(self, budget_ms=20000):
        """Load the page in headless Chromium; what its script returned."""
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            done = subprocess.run(
                [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                 "--dump-dom", self.origin + "/"],
                capture_output=True, text=True, timeout=120)
        found = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, re.S)
        assert found, f"chromium showed no page (exit {done.returncode}):\n{done.stderr[-2000:]}"
        text = html.unescape(found.group(1))
        assert text != "not run", "the page's script did not finish within the time budget"
        return json.loads(text)
