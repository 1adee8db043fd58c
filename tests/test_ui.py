"""The status page at /ui/: its files and headers over HTTP, and the page itself in a real
headless Chromium (Debian's chromium and chromium-driver, driven by selenium) against the
real service, the fake Google TTS and the local Anki sync server.
"""

import os
import shutil
import re
import time
from pathlib import Path

import pytest

import helpers
from anki_server import SyncServer, download_collection, notes_in
from browser import chromium
from conftest import GOOGLE_KEY
from helpers import card, wait_until
from service import ROOT, Service, request

JSON = "application/json"
PHONE = (390, 844)  # an iPhone 12-14's CSS pixels
ARTIFACTS = Path(os.environ.get("ANKISYNC_ARTIFACTS") or ROOT / "tests" / "artifacts")
# Chromium as tests/browser.py starts it, and nothing that talks to the network
# on its own (updates, sync, field trials, translation).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--disable-domain-reliability", "--disable-dev-shm-usage",
         "--disable-features=Translate,OptimizationHints,MediaRouter"]
XSS_WORD = "<img src=x onerror=window.pwned=1>"


def chromedriver():
    """The chromedriver binary; skip without it, except in CI, where that is a failure."""
    path = shutil.which("chromedriver")
    if path is None:
        message = "chromedriver is not installed (Debian: apt-get install chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message + "; CI runs these tests")
    return path


def start_chromium(profile, size=(1280, 900)):
    """A selenium session with a real headless Chromium: no driver download, no network."""
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium: no usage statistics sent
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService(executable_path=chromedriver()),
                            options=options)


@pytest.fixture
def browser(tmp_path):
    chromium(), chromedriver()  # skip (or, in CI, fail) before any service starts
    driver = start_chromium(tmp_path / "profile")
    yield driver
    driver.quit()


@pytest.fixture
def local_service(tmp_path, fake_tts):
    """An install with the fake Google TTS and no sync server (cards stay local)."""
    started = []

    def make():
        service = Service(tmp_path / "svc", ANKISYNC_SYNC_ENDPOINT=None,
                          ANKISYNC_GOOGLE_API_KEY=GOOGLE_KEY,
                          ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url)
        started.append(service)
        return service.start()

    yield make
    for service in started:
        service.kill()


def page_wait(driver, condition, what, timeout=45):
    """condition(driver)'s first true value, polled; fails naming what it waited for."""
    return wait_until(lambda: condition(driver), lambda: f"{what}; the page shows:\n"
                      + driver.find_element("tag name", "body").text, timeout, every=0.1)


def sign_in(driver, service, key=None):
    driver.get(service.url + "/ui/")
    field = page_wait(driver, lambda d: d.find_element("id", "key").is_displayed()
                      and d.find_element("id", "key"), "the sign-in form")
    field.send_keys(key or service.api_key)
    driver.find_element("css selector", "#signin-form button[type=submit]").click()


def signed_in(driver, service):
    sign_in(driver, service)
    page_wait(driver, lambda d: d.find_element("id", "app").is_displayed(), "the signed-in page")
    page_wait(driver, lambda d: d.find_element("id", "worker").text == "running",
              "the worker shown running")


def row(driver, task_id):
    found = driver.find_elements("css selector", f'li.job[data-task="{task_id}"]')
    return found[0] if found else None


def listed(driver):
    """[(taskId, word, badge)] of the jobs listed, read at once (the list is redrawn)."""
    return [tuple(item) for item in driver.execute_script(
        "return [...document.querySelectorAll('li.job')].map(row => [row.dataset.task,"
        " row.querySelector('.word').textContent, row.querySelector('.badge').textContent])")]


def shown_status(driver, task_id):
    """The job's status as the page shows it (its badge), or None while not listed."""
    return next((badge for task, _, badge in listed(driver) if task == task_id), None)


def wait_shown(driver, task_id, status, timeout=45):
    page_wait(driver, lambda d: shown_status(d, task_id) == status,
              f"task {task_id} shown as {status!r}", timeout)
    return row(driver, task_id)


def post(service, n, word=None):
    status, body = service.post_card(card(n, word))
    assert status == 202, body
    return body["taskId"]


def save_screenshot(driver, name, element=None):
    """The viewport as a PNG under ARTIFACTS, scrolled to element (else the top)."""
    if element is None:
        driver.execute_script("window.scrollTo(0, 0)")
    else:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


# --- over HTTP: the files, their headers, what they reveal ---------------------------------

@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """One install for the HTTP checks: no sync login, no TTS."""
    service = Service(tmp_path_factory.mktemp("ui") / "data", ANKISYNC_GOOGLE_API_KEY=None,
                      ANKISYNC_SYNC_ENDPOINT=None)
    service.start()
    yield service
    service.kill()


def raw(service, path, headers=None):
    """(status, headers, body bytes) of a GET sent as written: no client-side normalizing."""
    status, got, body = helpers.send(service.port, "GET", path, headers=headers)
    return status, got, body


def test_the_page_needs_no_token_and_holds_no_data(quiet):
    service = quiet
    status, headers, body = raw(service, "/ui/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == (ROOT / "ui" / "index.html").read_bytes()  # the file, nothing filled in
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css"),
                       ("index.html", "text/html")]:
        status, headers, body = raw(service, "/ui/" + name)
        assert status == 200 and headers["Content-Type"].startswith(kind), name
        assert body == (ROOT / "ui" / name).read_bytes()
    status, headers, _ = raw(service, "/ui")
    assert status == 301 and headers["Location"] == "ui/"
    # GET / still answers JSON for the existing clients
    assert request("GET", service.url + "/")[2] == {"status": "ok"}
    # nothing of the install in any file: not the key, the data dir, the voice
    for name in ("index.html", "app.js", "style.css"):
        text = raw(service, "/ui/" + name)[2].decode()
        assert service.api_key not in text and str(service.data_dir) not in text
        assert "ankisync.db" not in text


def test_the_page_sends_a_strict_content_security_policy(quiet):
    service = quiet
    for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
        status, headers, _ = raw(service, path)
        assert status == 200, path
        policy = {part.split()[0]: part.split()[1:]
                  for part in headers["Content-Security-Policy"].split(";")}
        assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
    # the page has no inline script or style for the policy to allow
    html = (ROOT / "ui" / "index.html").read_text()
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)  # no onclick= and the like


@pytest.mark.parametrize("path", [
    "/ui/..", "/ui/../ankisync.py", "/ui/%2e%2e/ankisync.py", "/ui/%2E%2E%2Fankisync.py",
    "/ui/..%2fankisync.py", "/ui/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/ui//etc/passwd",
    "/ui/%2Fetc%2Fpasswd", "/ui/..%5cankisync.py", "/ui/app.js/", "/ui/app.js%00.css",
    "/ui/.", "/ui/README.md", "/ui/../data/ankisync.db", "/ui/%2e%2e/data/.env",
    "/ui/credentials.json", "/ui/index.html/../../ankisync.py", "/ui/APP.JS",
])
def test_only_the_pages_own_files_are_served(quiet, path):
    """A name is looked up in the page's list, never joined to a path: `..`, encoded dots
    and slashes, absolute paths and other files of the checkout are a JSON 404."""
    status, headers, body = raw(quiet, path)
    assert status in (404, 400), (path, status, body[:200])
    assert headers["Content-Type"].startswith(JSON), path
    for secret in (b"import", b"root:", b"SQLite", b"api_key", b"hkey"):
        assert secret not in body, (path, body[:200])


def test_an_unchanged_file_is_a_304(quiet):
    service = quiet
    status, headers, _ = raw(service, "/ui/app.js")
    assert status == 200 and headers["ETag"]
    status, _, body = raw(service, "/ui/app.js", {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    assert raw(service, "/ui/app.js", {"If-None-Match": '"other"'})[0] == 200


@pytest.mark.slow  # a restart
def test_daily_stats_count_cards_and_failures_and_survive_the_purge(make_service, fake_tts,
                                                                    account):
    """Cards made and failures per day, from the job table; a cancelled card is no failure;
    a restart that purges the finished jobs (ANKISYNC_RESULT_TTL) keeps their counts."""
    service = make_service()
    service.sync_login(account)  # synced cards are purged; unsynced ones are kept
    assert service.call("GET", "/api/v1/stats/daily", token=None)[0] == 401
    done = [post(service, n) for n in range(3)]
    for task_id in done:
        assert service.wait(task_id)[0]["status"] == "success"
    fake_tts.valid_keys = {"another-key"}  # Google refuses the key: a failure for good
    failed = post(service, 10)
    assert service.wait(failed)[0]["status"] == "failure"
    fake_tts.hold()  # one card held while it is spoken, the next one waits: cancel it
    post(service, 20)
    fake_tts.wait_held()
    cancelled = post(service, 21)
    assert service.call("DELETE", f"/api/v1/tasks/{cancelled}")[0] == 200
    fake_tts.release()

    def today():
        status, _, body = service.call("GET", "/api/v1/stats/daily?days=7&utcOffset=0")
        assert status == 200, body
        assert len(body["days"]) == 7 and body["utcOffset"] == 0
        assert body["days"][-1]["date"] == time.strftime("%Y-%m-%d", time.gmtime())
        assert all(day["cards"] == day["failures"] == 0 for day in body["days"][:-1])
        return body["days"][-1]

    wait_until(lambda: today()["failures"] == 2, "the held card failed (refused key)")
    assert today() == {"date": today()["date"], "cards": 3, "failures": 2}
    # another clock's days: the counts move with it, none lost
    _, _, east = service.call("GET", "/api/v1/stats/daily?days=2&utcOffset=840")
    _, _, west = service.call("GET", "/api/v1/stats/daily?days=2&utcOffset=-720")
    for body in (east, west):
        assert sum(day["cards"] for day in body["days"]) == 3, body
    for query in ("days=0", "days=367", "days=x", "utcOffset=900", "utcOffset=1.5",
                  "days=%D9%A3"):  # ٣, an Arabic-Indic three
        status, headers, body = service.call("GET", "/api/v1/stats/daily?" + query)
        assert status == 400 and headers["Content-Type"] == JSON, (query, body)
        assert query.split("=")[0] in body["message"], body
    assert service.call("GET", "/api/v1/stats/daily?days=&utcOffset=")[0] == 200

    # a restart with a short result TTL purges the finished jobs at the worker's start
    wait_until(lambda: service.job(done[-1])["result"]["synced"], "the cards synced")
    assert service.stop() == 0
    service.env["ANKISYNC_RESULT_TTL"] = "0.001"
    service.start()
    wait_until(lambda: service.call("GET", f"/api/v1/tasks/{done[0]}")[0] == 404,
               "the finished jobs purged")
    assert today() == {"date": today()["date"], "cards": 3, "failures": 2}


# --- in Chromium ------------------------------------------------------------------------

@pytest.mark.slow
def test_sign_in_and_watch_cards_wait_run_and_finish_and_cancel_one(browser, local_service,
                                                                    fake_tts):
    service = local_service()
    driver = browser
    sign_in(driver, service, key="ak_wrong")
    page_wait(driver, lambda d: "wrong API key" in d.find_element("id", "signin-error").text,
              "the wrong key refused")
    assert not driver.find_element("id", "app").is_displayed()
    driver.find_element("id", "key").clear()
    signed_in(driver, service)
    # the tokens are in this tab's sessionStorage only; the key is kept nowhere
    stored = driver.execute_script(
        "return [Object.keys(sessionStorage).sort(), localStorage.length, document.cookie,"
        " document.getElementById('key').value]")
    assert stored == [["ankisync.access", "ankisync.refresh", "ankisync.renewAt"], 0, "", ""], (
        stored)
    assert driver.find_element("id", "voice").text == "en-US-Wavenet-D"
    assert "no sync login" in driver.find_element("id", "sync-hint").text.lower()

    fake_tts.hold()
    running = post(service, 1)
    fake_tts.wait_held()  # card 1 is being spoken: the next ones wait for it
    waiting, to_cancel = post(service, 2), post(service, 3)
    wait_shown(driver, running, "running")
    waiting_row = wait_shown(driver, waiting, "waiting")
    assert waiting_row.find_element("css selector", ".word").text == "word2"
    assert waiting_row.find_element("css selector", ".sentence").text == (
        "Sentence 2 with {{c1::word2}}.")
    page_wait(driver, lambda d: "3 waiting" in d.find_element("id", "queue").text,
              "the queue depth")
    assert not waiting_row.find_element("css selector", ".retry").is_displayed()

    wait_shown(driver, to_cancel, "waiting").find_element("css selector", ".cancel").click()
    cancelled = wait_shown(driver, to_cancel, "failed")
    assert "cancelled" in cancelled.find_element("css selector", ".error").text
    assert service.job(to_cancel)["error"]["type"] == "Cancelled"
    assert cancelled.find_element("css selector", ".retry").is_displayed()

    fake_tts.release()
    done = wait_shown(driver, waiting, "done")
    assert "1 attempt" in done.find_element("css selector", ".times").text
    assert not done.find_element("css selector", ".cancel").is_displayed()
    wait_shown(driver, running, "done")
    assert service.job(waiting)["status"] == "success"
    page_wait(driver, lambda d: d.find_element("id", "queue").text == "empty", "an empty queue")

    # the filter shows one status only
    from selenium.webdriver.support.ui import Select
    Select(driver.find_element("id", "filter")).select_by_value("failure")
    page_wait(driver, lambda d: [task for task, _, _ in listed(d)] == [to_cancel],
              "only the cancelled card listed")
    Select(driver.find_element("id", "filter")).select_by_value("")
    page_wait(driver, lambda d: [task for task, _, _ in listed(d)] == [
        to_cancel, waiting, running], "all three, newest first")
    save_screenshot(driver, "status-page-desktop.png")


@pytest.mark.slow
def test_on_a_phone_a_failed_card_shows_why_and_retry_makes_it(local_service, fake_tts,
                                                               tmp_path):
    """At a phone's size (390x844): no sideways scrolling, buttons big enough to tap, a
    card that Google refused shows the refusal, and Retry, once the key works, makes it."""
    chromium(), chromedriver()
    service = local_service()
    driver = start_chromium(tmp_path / "profile", size=PHONE)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 3, "mobile": True})
        driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
        signed_in(driver, service)
        wait_shown(driver, post(service, 1), "done")
        fake_tts.valid_keys = {"another-key"}
        failed = post(service, 2, word="serendipity")
        failed_row = wait_shown(driver, failed, "failed")
        error = failed_row.find_element("css selector", ".error").text
        assert error.startswith("TTSRefused: ") and len(error) > 30, error
        assert service.job(failed)["error"]["message"] in error
        assert driver.execute_script("return innerWidth") == PHONE[0]
        wide = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert wide[0] <= wide[1], f"the page scrolls sideways on a phone: {wide}"
        retry = failed_row.find_element("css selector", ".retry")
        for button in [retry] + driver.find_elements("css selector", "button"):
            if button.is_displayed():
                size = button.size
                assert size["height"] >= 44 and size["width"] >= 44, (button.text, size)
        save_screenshot(driver, "status-page-phone-top.png")
        path = save_screenshot(driver, "status-page-phone.png", failed_row)
        assert path.stat().st_size > 10_000

        fake_tts.valid_keys = {GOOGLE_KEY}  # the user fixed the key
        retry.click()
        done = wait_shown(driver, failed, "done")
        assert not done.find_element("css selector", ".error").is_displayed()
        assert not done.find_element("css selector", ".retry").is_displayed()
        assert service.job(failed)["status"] == "success"
    finally:
        driver.quit()


@pytest.mark.slow
def test_a_card_added_from_the_form_reaches_the_sync_server(browser, make_service, account,
                                                            sync_server, tmp_path):
    service = make_service()
    service.sync_login(account)
    driver = browser
    signed_in(driver, service)
    page_wait(driver, lambda d: "user" in d.find_element("id", "sync-detail").text,
              "the sync login shown")
    driver.find_element("id", "word").send_keys("luminous")
    sentence = driver.find_element("id", "sentence")
    sentence.send_keys("The luminous moon rose.")
    # the user selects "luminous" in the sentence, then presses the helper
    driver.execute_script("arguments[0].focus(); arguments[0].setSelectionRange(4, 12)",
                          sentence)
    driver.find_element("id", "cloze").click()
    assert sentence.get_attribute("value") == "The {{c1::luminous}} moon rose."
    driver.find_element("css selector", "#card-form button[type=submit]").click()
    page_wait(driver, lambda d: "Added" in d.find_element("id", "card-result").text,
              "the card accepted")
    task_id = page_wait(driver, lambda d: [task for task, word, _ in listed(d)
                                           if word == "luminous"], "the new card listed")[0]
    done = wait_shown(driver, task_id, "done")
    # the chart follows in the same round as the list, without a reload
    assert driver.find_element("id", "chart-summary").text.startswith("1 cards made"), (
        driver.find_element("id", "chart-summary").text)
    page_wait(driver, lambda d: "synced" in row(d, task_id).find_element(
        "css selector", ".times").text.split(" · "), "the card synced")
    assert done.find_element("css selector", ".sentence").text == "The {{c1::luminous}} moon rose."
    page_wait(driver, lambda d: d.find_element("id", "sync").text != "never", "the last sync")
    assert not driver.find_element("id", "sync-error").is_displayed()

    # with nothing selected, the helper hides the word where it first appears
    driver.find_element("id", "word").send_keys("Moon")
    driver.find_element("id", "sentence").send_keys("The moon rose.")
    driver.execute_script("arguments[0].setSelectionRange(0, 0)", sentence)
    driver.find_element("id", "cloze").click()
    assert sentence.get_attribute("value") == "The {{c1::moon}} rose."

    col = download_collection(tmp_path / "second-device", sync_server.url, account, "pass")
    try:
        [note] = notes_in(col)
    finally:
        col.close()
    assert note["fields"]["Word"] == "luminous"
    assert note["fields"]["Text"] == "The {{c1::luminous}} moon rose."
    # and the chart counts it today
    driver.refresh()
    page_wait(driver, lambda d: d.find_element("id", "chart-summary").text.startswith(
        "1 cards made, 0 failed"), "the chart's count")
    assert len(driver.find_elements("css selector", "#chart svg rect.cards")) == 30


@pytest.mark.slow
def test_a_word_with_markup_is_shown_as_text(browser, local_service):
    """A card's fields are HTML to Anki (the API escapes what it is sent): the page shows
    their text. A word that would run script if the page used innerHTML shows as text."""
    service = local_service()
    escaped = XSS_WORD.replace("<", "&lt;").replace(">", "&gt;")
    task_id = post(service, 1, word=escaped)
    status, body = service.post_card(dict(card(2), word=XSS_WORD))
    assert status == 400 and "word" in body["errors"]  # the raw tag is refused at the door
    driver = browser
    signed_in(driver, service)
    shown = wait_shown(driver, task_id, "done")
    assert shown.find_element("css selector", ".word").text == XSS_WORD
    assert not driver.find_elements("css selector", "#jobs img")
    assert driver.execute_script("return window.pwned") is None
    # typed into the form, the same word is refused with the server's message, as text
    driver.find_element("id", "word").send_keys(XSS_WORD)
    driver.find_element("id", "sentence").send_keys("a {{c1::b}} c")
    driver.find_element("css selector", "#card-form button[type=submit]").click()
    page_wait(driver, lambda d: "word must not be empty" in d.find_element(
        "id", "card-result").text, "the refusal shown")
    assert not driver.find_elements("css selector", "img")
    assert driver.execute_script("return window.pwned") is None
    # the browser refuses inline script on the page (the policy is enforced, not only sent)
    driver.execute_script("""
        const s = document.createElement('script'); s.textContent = 'window.pwned = 2';
        document.body.append(s);""")
    assert driver.execute_script("return window.pwned") is None


@pytest.mark.slow
def test_an_expired_session_asks_to_sign_in_again(browser, local_service):
    """The access token is renewed with the refresh token; when both are gone (the key
    was replaced with `./run.sh api-key`), the page asks to sign in again."""
    service = local_service()
    driver = browser
    signed_in(driver, service)
    old = driver.execute_script("return sessionStorage.getItem('ankisync.access')")
    # an access token the server refuses (401): the page renews it and carries on
    driver.execute_script("sessionStorage.setItem('ankisync.access', 'x.e30.y')")
    page_wait(driver, lambda d: d.execute_script(
        "return sessionStorage.getItem('ankisync.access')") not in ("x.e30.y", old),
        "the access token renewed")
    assert driver.find_element("id", "app").is_displayed()
    # a token near its end (by its own lifetime, not the device's clock) is renewed first
    current = driver.execute_script("sessionStorage.setItem('ankisync.renewAt', '0');"
                                    " return sessionStorage.getItem('ankisync.access')")
    page_wait(driver, lambda d: d.execute_script(
        "return sessionStorage.getItem('ankisync.access') !== arguments[0]"
        " && Number(sessionStorage.getItem('ankisync.renewAt')) > Date.now() + 3000000",
        current), "the access token renewed ahead of its end")
    result = service.cli("api-key")  # a new key and token secret: every token stops working
    assert result.returncode == 0, result.stderr
    page_wait(driver, lambda d: d.find_element("id", "signin").is_displayed(),
              "the sign-in form again")
    assert "sign in again" in driver.find_element("id", "signin-error").text
    assert driver.execute_script("return sessionStorage.length") == 0


def test_the_ui_folder_holds_only_the_files_served():
    """A file added to ui/ and not to statuspage.FILES would never be served: keep them equal."""
    import statuspage
    assert {path.name for path in (ROOT / "ui").iterdir()} == set(statuspage.FILES)



def health_polls(driver):
    """Start times (ms since the page loaded) of the page's GET /api/v1/health requests."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(r => r.name.includes('/api/v1/health')).map(r => r.startTime)")


@pytest.mark.slow
def test_a_hidden_tab_does_not_poll_and_polls_again_when_shown(browser, local_service):
    """While another tab is in front, the page asks the server nothing; shown again, it
    refreshes at once. The other tab, signed in on its own, polls meanwhile: its third
    poll is the proof that time passed (no fixed sleep)."""
    service = local_service()
    driver = browser
    signed_in(driver, service)
    first = driver.current_window_handle
    # the event's own time: the page's handler, which runs first, may start a poll at once
    driver.execute_script("window.seen = []; document.addEventListener('visibilitychange',"
                          " event => seen.push([document.visibilityState, event.timeStamp]))")
    driver.switch_to.new_window("tab")
    signed_in(driver, service)  # sessionStorage is per tab: this one signs in by itself
    page_wait(driver, lambda d: len(health_polls(d)) >= 3, "three polls in the tab in front")
    driver.switch_to.window(first)
    seen = page_wait(driver, lambda d: len(d.execute_script("return seen")) >= 2 and
                     d.execute_script("return seen"), "hidden, then shown again")
    assert [state for state, _ in seen[:2]] == ["hidden", "visible"], seen
    hidden_at, shown_at = seen[0][1], seen[1][1]
    page_wait(driver, lambda d: any(start >= shown_at for start in health_polls(d)),
              "a poll once shown again")
    assert not [start for start in health_polls(driver) if hidden_at < start < shown_at], (
        seen, health_polls(driver))


@pytest.mark.slow
def test_a_refused_sync_login_says_what_to_do_and_retry_fixes_the_card(browser, fake_tts,
                                                                        tmp_path):
    """The sync server's password changed (or the session expired): the page shows the
    failing sync with `./run.sh login USERNAME`, and the failed card; after the login,
    Retry takes the card to the server."""
    with SyncServer(tmp_path / "own-sync", users={"me": "pass"}) as own:
        service = Service(tmp_path / "svc", ANKISYNC_SYNC_ENDPOINT=own.url,
                          ANKISYNC_GOOGLE_API_KEY=GOOGLE_KEY,
                          ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url)
        try:
            service.start()
            service.sync_login("me")
            first = post(service, 1)
            assert service.wait(first)[0]["result"]["synced"]
            own.stop()
            own.users = {"me": "changed"}  # the session made with "pass" is refused now
            own.start()
            failed = post(service, 2)
            job = service.wait(failed)[0]
            assert job["status"] == "failure" and job["error"]["type"] == "SyncAuthError", job

            driver = browser
            signed_in(driver, service)
            page_wait(driver, lambda d: d.find_element("id", "sync").text == "failing",
                      "the sync shown failing")
            assert driver.find_element("id", "sync-error").text.startswith("SyncAuthError")
            assert "./run.sh login USERNAME" in driver.find_element("id", "sync-hint").text
            assert "bad" in driver.find_element("id", "sync-panel").get_attribute("class")
            shown = wait_shown(driver, failed, "failed")
            assert "SyncAuthError" in shown.find_element("css selector", ".error").text

            service.sync_login("me", "changed")  # what the page told the user to do
            shown.find_element("css selector", ".retry").click()
            wait_shown(driver, failed, "done")
            page_wait(driver, lambda d: not d.find_element("id", "sync-error").is_displayed(),
                      "the sync error gone")
            assert service.job(failed)["result"]["synced"]
        finally:
            service.kill()
