"""The status page's files (ui/), served by the web process at /ui/.

Only the files listed in FILES are served, read from ui/ next to this module:
a name from the URL is looked up in that table and never joined to a path, so
no URL (`..`, `%2e%2e`, an absolute path) reaches another file. The files hold
no data; the page's script fetches it from the API with the user's token.
"""

import hashlib
from pathlib import Path

UI_DIR = Path(__file__).resolve().parent / "ui"
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style (no inline script, nothing from
# another origin), talks only to its own origin, and may not be framed.
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
          " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none';"
          " frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # revalidated each load (a cheap 304), so an upgrade shows at once
    "Cache-Control": "no-cache",
}


def asset(name, if_none_match=None):
    """(status, headers, body) of one page file; None when name is not one of them."""
    if name not in FILES:
        return None
    body = (UI_DIR / name).read_bytes()
    etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
    headers = {**HEADERS, "Content-Type": FILES[name], "ETag": etag}
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return 304, headers, b""
    return 200, headers, body
