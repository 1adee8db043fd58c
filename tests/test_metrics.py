"""GET /metrics (ANKISYNC_METRICS=on): Prometheus's text, read from the job table."""

import json
import sqlite3
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from helpers import card, send, wait_until
from service import ROOT, request

METRICS_KEY = "mK7-q2Zr8pWx4vNc6tLb"


def scrape(service):
    status, headers, body = send(service.port, "GET", "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def histogram(samples, name):
    buckets = sorted((float(dict(labels)["le"]), value) for (sample, labels), value
                     in samples.items() if sample == f"{name}_bucket")
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf"), buckets  # cumulative
    return {"count": samples[f"{name}_count", ()], "sum": samples[f"{name}_sum", ()],
            "buckets": dict(buckets)}


def table(service, sql):
    db = sqlite3.connect(service.data_dir / "ankisync.db")
    try:
        return db.execute(sql).fetchone()
    finally:
        db.close()


def test_metrics_are_off_by_default(service):
    status, _, body = request("GET", service.url + "/metrics")
    assert status == 404 and "ANKISYNC_METRICS=on" in body["message"], body


def test_a_scrape_counts_what_the_job_table_holds(make_service, account, fake_tts):
    service = make_service(ANKISYNC_METRICS="on", ANKISYNC_RESULT_TTL=1)
    service.sync_login(account)
    for n in range(3):
        assert service.wait(service.post_card(card(n))[1]["taskId"])[0]["status"] == "success"
    fake_tts.fail_next(2, 400)  # Google refuses the fourth card's clips: it fails for good
    failed, _ = service.wait(service.post_card(card(9))[1]["taskId"])
    assert failed["status"] == "failure", failed

    samples = scrape(service)
    jobs = {status: samples["ankisync_jobs", (("status", status),)]
            for status in ("pending", "started", "retrying", "success", "failure")}
    assert jobs == {"pending": 0, "started": 0, "retrying": 0, "success": 3, "failure": 1}
    assert samples["ankisync_queue_depth", ()] == 0
    assert samples["ankisync_worker_up", ()] == 1
    last_sync = float(table(service, "SELECT value FROM ankisync_state"
                                     " WHERE key = 'last_sync_at'")[0])
    assert samples["ankisync_last_sync_success_timestamp_seconds", ()] == last_sync

    job = histogram(samples, "ankisync_job_duration_seconds")
    count, total = table(service, "SELECT count(*), sum(completed_at - created_at)"
                                  " FROM ankisync_jobs")
    assert job["count"] == count == 4 and abs(job["sum"] - total) < 1e-6
    spoken = histogram(samples, "ankisync_tts_duration_seconds")
    synced = histogram(samples, "ankisync_sync_duration_seconds")
    assert spoken["count"] == synced["count"] == 3  # the failed card was never spoken nor synced
    assert 0 < spoken["sum"] and 0 < synced["sum"]
    assert synced["sum"] == table(service, "SELECT sum(sync_seconds) FROM ankisync_jobs")[0]

    # a restarted worker purges the finished jobs (ANKISYNC_RESULT_TTL=1): the job table
    # forgets them, the histograms keep them, and nothing counted in a process is lost
    # (the worker purges at its start what finished more than the TTL before: the
    # restart must come after that, or the purge keeps them till the next hour)
    wait_until(lambda: time.time() - table(service, "SELECT max(completed_at)"
                                                    " FROM ankisync_jobs")[0] > 1.5,
               "the jobs to be older than ANKISYNC_RESULT_TTL")
    service.stop()
    service.start()
    wait_until(lambda: table(service, "SELECT count(*) FROM ankisync_jobs")[0] == 0,
               lambda: "the purge at the worker's start:\n" + service.logs())
    after = scrape(service)
    assert after["ankisync_jobs", (("status", "success"),)] == 0
    for name, before in (("job", job), ("tts", spoken), ("sync", synced)):
        assert histogram(after, f"ankisync_{name}_duration_seconds") == before, name


def from_the_lan(service, headers):
    """(status, body) of GET /metrics as from 192.168.1.20, through the service's own app
    called in-process (WSGI): the tests send nothing off loopback."""
    script = (
        "import io, json, sys, wsgiref.util, ankisync\n"
        "environ = {'REQUEST_METHOD': 'GET', 'PATH_INFO': '/metrics', 'REMOTE_ADDR':"
        " '192.168.1.20', 'HTTP_HOST': '192.168.1.10:5000', 'wsgi.input': io.BytesIO()}\n"
        "environ.update(json.loads(sys.argv[1]))\n"
        "wsgiref.util.setup_testing_defaults(environ)\n"
        "seen = []\n"
        "body = b''.join(ankisync.app(environ, lambda status, headers, *_: seen.append(status)))\n"
        "print(json.dumps([int(seen[0].split()[0]), body.decode()]))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(headers)], cwd=ROOT,
                          env=service.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_retried_failure_stays_counted(make_service, fake_tts):
    """A histogram only grows (else Prometheus reads a counter reset): a failed card a
    person retries keeps its failure counted, and its success adds one more."""
    service = make_service(ANKISYNC_METRICS="on")
    fake_tts.fail_next(2, 400)  # Google refuses the card's clips: it fails for good
    task_id = service.post_card(card(1))[1]["taskId"]
    assert service.wait(task_id)[0]["status"] == "failure"
    failed = histogram(scrape(service), "ankisync_job_duration_seconds")
    assert failed["count"] == 1
    status, _, _ = service.call("POST", f"/api/v1/tasks/{task_id}/retry")
    assert status == 202
    meanwhile = histogram(scrape(service), "ankisync_job_duration_seconds")
    assert meanwhile["count"] >= failed["count"]  # however far the retry has come
    assert service.wait(task_id)[0]["status"] == "success"
    done = histogram(scrape(service), "ankisync_job_duration_seconds")
    assert done["count"] == 2 and done["sum"] > failed["sum"]


def test_with_a_key_every_caller_needs_it(make_service):
    service = make_service(ANKISYNC_METRICS="on", ANKISYNC_METRICS_KEY=METRICS_KEY)
    # this machine too: behind a reverse proxy on it, everyone's requests come from here
    assert send(service.port, "GET", "/metrics", source="127.0.0.2")[0] == 401
    assert send(service.port, "GET", "/metrics", source="127.0.0.2", headers={
        "Authorization": f"Bearer {METRICS_KEY}"})[0] == 200
    status, body = from_the_lan(service, {})
    assert status == 401 and "Authorization: Bearer <ANKISYNC_METRICS_KEY>" in body, body
    assert "ankisync_jobs" not in body
    assert from_the_lan(service, {"HTTP_AUTHORIZATION": "Bearer wrong-key"})[0] == 401
    status, body = from_the_lan(service, {"HTTP_AUTHORIZATION": f"Bearer {METRICS_KEY}"})
    assert status == 200 and "ankisync_queue_depth 0.0" in body, body
    # an API access token works too (it lasts an hour: for a person's curl, not Prometheus)
    status, body = from_the_lan(service, {"HTTP_X_ACCESS_TOKEN": service.login()})
    assert status == 200 and "ankisync_worker_up 1.0" in body

    # a web page's fetch from this very machine, cross-site, is no Prometheus
    status, _, raw = send(service.port, "GET", "/metrics",
                          headers={"Origin": "https://dictionary.cambridge.org"})
    assert status == 403 and b"not by web pages" in raw
    # a weak key is refused at start
    service.env["ANKISYNC_METRICS_KEY"] = "metrics"
    result = service.cli("status")
    assert result.returncode == 1 and "ANKISYNC_METRICS_KEY" in result.stderr
    assert "too weak" in result.stderr


def test_without_a_key_only_this_machine_reads_them_and_not_through_a_proxy(make_service):
    service = make_service(ANKISYNC_METRICS="on")
    assert send(service.port, "GET", "/metrics", source="127.0.0.2")[0] == 200
    for forwarded in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                      {"X-Real-IP": "203.0.113.9"}):
        status, _, raw = send(service.port, "GET", "/metrics", source="127.0.0.2",
                              headers=forwarded)
        assert status == 401 and b"set ANKISYNC_METRICS_KEY first" in raw, forwarded
    status, body = from_the_lan(service, {"HTTP_AUTHORIZATION": "Bearer anything-at-all"})
    assert status == 401 and "set ANKISYNC_METRICS_KEY first" in body


def test_with_the_worker_down_the_web_process_says_so(make_service):
    """The API alone (its worker never started): the figures still come from the data dir."""
    service = make_service(start=False, ANKISYNC_METRICS="on")
    web = subprocess.Popen([sys.executable, str(ROOT / "ankisync.py"), "serve"], cwd=ROOT,
                           env=service.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        def up():
            try:
                return request("GET", service.url + "/")[0] == 200
            except OSError:
                return False
        wait_until(up, "the API to listen", timeout=60)
        samples = scrape(service)
        assert samples["ankisync_worker_up", ()] == 0
        assert samples["ankisync_queue_depth", ()] == 0
        assert not any(name == "ankisync_last_sync_success_timestamp_seconds"
                       for name, _ in samples)  # never synced: absent, not zero
        assert histogram(samples, "ankisync_job_duration_seconds")["count"] == 0
    finally:
        web.kill()
        web.wait()
