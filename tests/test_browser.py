"""What a page in the user's browser can do to the REST API, in a real headless Chromium.

The user's browser runs the userscript on the dictionary site, and any other page the
user opens. Pages here are served from other loopback addresses (other origins).
"""

import json

import pytest

from browser import Page, chromium
from service import CARD, Service

pytestmark = pytest.mark.slow  # a real browser

# The page's requests: a login with the given key, then what the answer let it read.
ATTEMPT = """
async function attempt(path, options) {
  try {
    const answer = await fetch(API + path, options);
    return {status: answer.status, body: options.mode === "no-cors" ? null : await answer.text()};
  } catch (error) {
    return {blocked: String(error)};
  }
}
"""


def page_script(api, body):
    return f"const API = {json.dumps(api)};\n{ATTEMPT}\n{body}"


@pytest.fixture
def browser():
    chromium()  # skips (or, in CI, fails) before any service starts


def test_a_foreign_page_can_neither_lock_the_user_out_nor_read_answers(browser, tmp_path):
    """A page on another origin fails logins on purpose from the user's own address: the
    browser sends none of them (CORS preflight refused), so the user's typo is a plain
    403, not a lock-out; and the page cannot read what the API answers."""
    service = Service(tmp_path / "data", ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    try:
        script = page_script(service.url, """
        const json = {method: "POST", headers: {"content-type": "application/json"},
                      body: JSON.stringify({key: "ak_wrong"})};
        const plain = {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"},
                       body: JSON.stringify({key: "ak_wrong"})};
        const result = {json: [], plain: []};
        for (let i = 0; i < 8; i++) result.json.push(await attempt("/api/v1/login", json));
        for (let i = 0; i < 8; i++) result.plain.push(await attempt("/api/v1/login", plain));
        result.read = await attempt("/", {});
        return result;
        """)
        with Page(script) as page:
            seen = page.run()
        assert all("blocked" in answer for answer in seen["json"]), seen
        assert all(answer == {"status": 0, "body": None} for answer in seen["plain"]), seen
        assert "blocked" in seen["read"], seen
        # the address the page shares with the user is not locked out
        status, _, body = service.call("POST", "/api/v1/login", {"key": "ak_typo"}, token=None)
        assert status == 403, body
        assert service.call("POST", "/api/v1/login", {"key": service.api_key},
                            token=None)[0] == 201
        assert "locked out" not in service.logs()
    finally:
        service.kill()


def test_the_userscripts_origin_works_and_others_cannot_read(browser, tmp_path):
    """The allowed origin (the dictionary site; here a loopback page configured as it)
    logs in, checks its token and posts a card as the userscript does; a page of any
    other origin running the same script reads nothing."""
    allowed = Page(host="127.0.0.6")
    service = Service(tmp_path / "data", ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_SYNC_ENDPOINT=None, ANKISYNC_CORS_ORIGINS=allowed.origin)
    service.start()
    userscript = page_script(service.url, f"""
        const login = await attempt("/api/v1/login", {{method: "POST",
            headers: {{"content-type": "application/json"}},
            body: JSON.stringify({{key: {json.dumps(service.api_key)}}})}});
        if (!login.body) return {{login}};
        const token = JSON.parse(login.body).accessToken;
        const health = await attempt("/api/v1/health", {{headers: {{"x-access-token": token}}}});
        const card = await attempt("/api/v1/clozeNotes", {{method: "POST",
            headers: {{"content-type": "application/json", "x-access-token": token}},
            body: JSON.stringify({json.dumps(CARD)})}});
        return {{login: login.status, health: health.status, card: card.status}};
        """)
    try:
        allowed.script = userscript
        seen = allowed.run()
        assert seen == {"login": 201, "health": 200, "card": 202}, seen
        with Page(userscript, host="127.0.0.5") as foreign:
            seen = foreign.run()
        assert "blocked" in seen["login"], seen
    finally:
        allowed.close()
        service.kill()
