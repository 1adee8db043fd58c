"""Status page: its weight and how long it takes to show in Chromium, as a phone, and on a Pi.

One install (through `./run.sh`, as every bench here) with `--cards` cards made
and synced, so the page shows a full list and a chart. Chromium (Debian's
`chromium` with `chromium-driver`, through selenium, as tests/test_ui.py) signs in
once at a phone's size, then reloads /ui/ with the cache off (the tokens stay in the
tab) and reads the browser's own Resource Timing and a mark the page sets when its
first data is on screen:

- `ui-weight`: bytes transferred (headers included) for the page's files
  (index.html, app.js, style.css) and for its first round of API calls;
- `ui-load`: navigation start to the load event, and to the first data shown;
- `ui-load-4x`: the same with the CPU slowed 4x through the DevTools protocol
  (`Emulation.setCPUThrottlingRate`), a budget for a Pi or a cheap phone;
- `stats-daily`: `GET /api/v1/stats/daily`'s query (jobs.daily) over a job table
  of `--jobs` finished jobs (default 10,000), timed in this process.

    .venv/bin/python bench/ui.py --runs 5
"""

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, card, main

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import db  # noqa: E402
import jobs  # noqa: E402
from test_ui import FLAGS  # noqa: E402  (the flags the tests start Chromium with)

PAGE_FILES = ("index.html", "app.js", "style.css")


def add_arguments(parser):
    parser.add_argument("--cards", type=int, default=50,
                        help="cards made before the page is loaded (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=10_000,
                        help="finished jobs in the table stats-daily counts (default %(default)s)")
    parser.add_argument("--cpu-slowdown", type=float, default=4,
                        help="CPU throttling rate of the Pi-sized run (default %(default)s)")


def browser(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in FLAGS + [f"--user-data-dir={profile}", "--window-size=390,844"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService(executable_path=shutil.which("chromedriver")),
                            options=options)


def stats_query(count):
    """Milliseconds of jobs.daily over a table of `count` finished jobs (median of 20)."""
    workdir = Path(tempfile.mkdtemp(prefix="ankisync-bench-stats-"))
    try:
        path = workdir / "ankisync.db"
        jobs.init(path)
        now, rows = time.time(), []
        for _ in range(count):
            finished = now - random.random() * 40 * 86400
            status = random.choice(["success"] * 9 + ["failure"])
            rows.append((jobs.new_id(), status, "{}", finished - 5, finished,
                         json.dumps({"type": "TTSRefused", "message": "m"})
                         if status == "failure" else None))
        with db.write(path) as conn:
            conn.executemany("INSERT INTO ankisync_jobs (id, status, request, created_at,"
                             " completed_at, error) VALUES (?, ?, ?, ?, ?, ?)", rows)
        times = []
        for _ in range(20):
            began = time.perf_counter()
            jobs.daily(path, 30, 3600)
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_once(rig, args):
    service = rig.service(ANKISYNC_TTS_VOICE="en-US-Wavenet-D")
    try:
        posted = []
        for n in range(args.cards):
            status, _, body = service.call("POST", "/api/v1/clozeNotes", card())
            assert status == 202, body
            posted.append(body["taskId"])
        for task_id in posted:
            service.wait(task_id, timeout=300)
        profile = Path(tempfile.mkdtemp(prefix="ankisync-bench-chromium-"))
        driver = browser(profile)
        try:
            driver.get(service.url + "/ui/")
            driver.find_element("id", "key").send_keys(service.api_key)
            driver.find_element("css selector", "#signin-form button[type=submit]").click()
            deadline = time.monotonic() + 60
            while not driver.execute_script("return sessionStorage.length"):
                if time.monotonic() > deadline:
                    raise RuntimeError("sign-in did not finish within 60 s")
                time.sleep(0.05)
            # sessionStorage belongs to the tab: each run reloads the signed-in tab
            results = {}
            for name, slowdown in (("ui-load", 1), ("ui-load-4x", args.cpu_slowdown)):
                driver.execute_cdp_cmd("Network.enable", {})
                driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
                driver.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": slowdown})
                driver.refresh()
                deadline = time.monotonic() + 60
                while not driver.execute_script(
                        "return performance.getEntriesByName('ankisync-data-shown').length"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the page showed no data within 60 s")
                    time.sleep(0.05)
                results[name] = measure(driver)
            driver.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": 1})
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        rig.stop(service)
    load = results["ui-load"]
    return {
        "ui-weight": {**{f"{name}_bytes": size for name, size in load["files"].items()},
                      "page_bytes": load["page"], "first_data_bytes": load["data"]},
        "ui-load": {"load_ms": load["load_ms"], "shown_ms": load["shown_ms"]},
        "ui-load-4x": {"load_ms": results["ui-load-4x"]["load_ms"],
                       "shown_ms": results["ui-load-4x"]["shown_ms"]},
        "stats-daily": {"ms": stats_query(args.jobs), "jobs": args.jobs},
    }


def measure(driver):
    """The loaded page's timings and transfer sizes, from the browser's Resource Timing."""
    seen = driver.execute_script("""
        const nav = performance.getEntriesByType("navigation")[0];
        return {size: nav.transferSize, load: nav.loadEventEnd,
                shown: performance.getEntriesByName("ankisync-data-shown")[0].startTime,
                resources: performance.getEntriesByType("resource").map(
                    r => ({name: r.name, size: r.transferSize}))};""")
    files, data = {"index.html": seen["size"]}, 0
    for resource in seen["resources"]:
        name = resource["name"].rsplit("/", 1)[-1]
        if "/ui/" in resource["name"] and name in PAGE_FILES:
            files[name] = resource["size"]
        elif "/api/v1/" in resource["name"]:
            data += resource["size"]
    return {"files": files, "page": sum(files.values()), "data": data,
            "load_ms": seen["load"], "shown_ms": seen["shown"]}


def line_for(name):
    if name == "ui-weight":
        return lambda r: (f"page {r['page_bytes']:.0f} B transferred (index.html"
                          f" {r['index.html_bytes']:.0f}, app.js {r['app.js_bytes']:.0f},"
                          f" style.css {r['style.css_bytes']:.0f}, headers included, no"
                          f" compression); first API round {r['first_data_bytes']:.0f} B")
    if name == "stats-daily":
        return lambda r: f"{r['ms']:.2f} ms over {r['jobs']:.0f} finished jobs"
    return lambda r: f"load event {r['load_ms']:.0f} ms, first data shown {r['shown_ms']:.0f} ms"


if __name__ == "__main__":
    main(__doc__, add_arguments, run_once, line_for)
