"""Alerts (ANKISYNC_NOTIFY) received by a JSON webhook on loopback, through Apprise."""

import json
import sqlite3
import time

import pytest

from anki_server import SyncServer, seed_other_device
from helpers import card, wait_for_log, wait_until
from webhook import Webhook


@pytest.fixture
def webhook():
    with Webhook() as hook:
        yield hook


def failing(make_service, webhook, name="svc", **settings):
    """A service whose every card fails for good (Google refuses its key), alerting webhook."""
    return make_service(name, ANKISYNC_GOOGLE_API_KEY="a-revoked-key", ANKISYNC_TTS="google",
                        ANKISYNC_NOTIFY=webhook.url(), **settings)


def failed_job(service, n):
    job, _ = service.wait(service.post_card(card(n))[1]["taskId"])
    assert job["status"] == "failure", job
    return job


def test_a_failed_job_alerts_once_an_hour_even_across_restarts(make_service, webhook):
    service = failing(make_service, webhook)
    first = failed_job(service, 1)
    wait_until(lambda: webhook.messages, lambda: "an alert:\n" + service.logs())
    message = webhook.messages[0]
    assert message["title"] == "ankisync: a card failed" and message["user"] == webhook.user
    text = message["message"]
    assert "\u201cword1\u201d" in text and "TTSRefused" in text  # the card and the cause
    assert "ANKISYNC_GOOGLE_API_KEY" in text  # the job's own advice: the fix
    assert f"/api/v1/tasks/{first['taskId']}/retry" in text and "/ui/" in text

    failed_job(service, 2)  # a second failure within the hour: no second message
    wait_for_log(service, "alert job_failed not sent: one went out")
    service.stop()
    service.start()  # a restarted worker remembers (the job database)
    failed_job(service, 3)
    wait_until(lambda: service.logs().count("alert job_failed not sent") == 2, service.logs)
    assert webhook.attempts == 1 and len(webhook.messages) == 1
    # the URL's password never reaches the log, however verbose (DEBUG here)
    assert webhook.password not in service.logs()
    assert "json://..." in service.logs()  # what the log shows of it instead


def test_login_refused_by_the_sync_server_says_to_log_in_again(make_service, webhook, account):
    service = make_service(ANKISYNC_NOTIFY=webhook.url())
    service.sync_login(account)
    assert service.wait(service.post_card(card(1))[1]["taskId"])[0]["status"] == "success"
    # the server no longer knows the saved session (a password changed elsewhere)
    path = service.data_dir / "credentials.json"
    stored = json.loads(path.read_text())
    stored["sync"]["hkey"] = "0" * len(stored["sync"]["hkey"])
    path.write_text(json.dumps(stored))

    job, _ = service.wait(service.post_card(card(2))[1]["taskId"])
    assert job["status"] == "failure" and job["error"]["type"] == "SyncAuthError", job
    wait_until(lambda: webhook.messages, lambda: "an alert:\n" + service.logs())
    message = webhook.messages[0]
    assert message["title"] == "ankisync: the sync login was refused"
    assert "`./run.sh login USER`" in message["message"]
    assert "sync server at http://127.0.0.1" in message["message"]
    # the job's failure is the same cause: one message, not two
    wait_for_log(service, "alert login_refused not sent")
    assert webhook.titles() == ["ankisync: the sync login was refused"]

    service.sync_login(account)  # what the message says: the card goes up, the job succeeds
    assert service.wait(job["taskId"], until=("success",))[0]["status"] == "success"


def test_syncs_failing_for_an_hour_alert(make_service, webhook, tmp_path):
    server = SyncServer(tmp_path / "own-server").start()
    try:
        service = make_service(ANKISYNC_NOTIFY=webhook.url(), ANKISYNC_SYNC_ENDPOINT=server.url,
                               ANKISYNC_MAX_ATTEMPTS=2)
        service.sync_login("user")
    finally:
        server.stop()  # gone: every sync fails from now on
    job, _ = service.wait(service.post_card(card(1))[1]["taskId"])
    assert job["status"] == "failure" and job["error"]["type"] == "SyncUnavailable", job
    # failing is recorded, but an hour has not passed: only the job's failure is announced
    wait_until(lambda: webhook.titles() == ["ankisync: a card failed"], service.logs)
    db = sqlite3.connect(service.data_dir / "ankisync.db")
    since = float(db.execute("SELECT value FROM ankisync_state"
                             " WHERE key = 'sync_failing_since'").fetchone()[0])
    assert since > time.time() - 120
    # as if that first failure were an hour old (the test cannot wait an hour)
    with db:
        db.execute("UPDATE ankisync_state SET value = ? WHERE key = 'sync_failing_since'",
                   (str(since - 3700),))
    db.close()
    service.post_card(card(2))
    wait_until(lambda: len(webhook.messages) == 2, lambda: "a second alert:\n" + service.logs())
    message = webhook.messages[1]
    assert message["title"] == "ankisync: syncs have failed for over an hour"
    assert "could not sync" in message["message"] and "ANKISYNC_SYNC_ENDPOINT" in message["message"]


def test_a_full_download_alerts(make_service, webhook, sync_server, account, tmp_path):
    service = make_service(ANKISYNC_NOTIFY=webhook.url())
    service.sync_login(account)
    assert service.wait(service.post_card(card(1))[1]["taskId"])[0]["status"] == "success"
    # another device puts a collection of its own on the server: ours cannot merge with it
    seed_other_device(tmp_path / "phone", sync_server.url, account, "from my phone")
    job, _ = service.wait(service.post_card(card(2))[1]["taskId"])
    assert job["status"] == "success", job
    wait_until(lambda: webhook.messages, lambda: "an alert:\n" + service.logs())
    assert webhook.titles() == ["ankisync: the collection was replaced by the sync server's copy"]
    assert "added back" in webhook.messages[0]["message"]


def test_notify_test_says_whether_the_message_arrived(make_service, webhook):
    service = make_service(start=False, ANKISYNC_NOTIFY=webhook.url())
    result = service.cli("notify-test")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "URL 1 (json://...): sent\n"
    assert webhook.titles() == ["ankisync: test message"]
    assert "notify-test" in webhook.messages[0]["message"]

    webhook.status = 500  # the notifier refuses it
    result = service.cli("notify-test")
    assert result.returncode == 1
    assert result.stdout.startswith("NOT SENT: URL 1 (json://...)")
    assert "ANKISYNC_NOTIFY" in result.stderr
    assert webhook.password not in result.stdout + result.stderr

    service.env["ANKISYNC_NOTIFY"] = "nosuchservice://token@example"
    result = service.cli("notify-test")
    assert result.returncode == 1 and "not a notification URL Apprise can use" in result.stderr
    assert "token" not in result.stderr
    service.env["ANKISYNC_NOTIFY"] = ""
    result = service.cli("notify-test")
    assert result.returncode == 1 and "ANKISYNC_NOTIFY is empty" in result.stderr


def test_the_url_can_come_from_a_file_and_is_never_shown(make_service, webhook, tmp_path):
    secret = tmp_path / "notify-url"
    secret.write_text(webhook.url() + "\n")
    service = make_service(start=False, ANKISYNC_NOTIFY_FILE=str(secret))
    result = service.cli("notify-test")
    assert result.returncode == 0 and webhook.titles() == ["ankisync: test message"], result
    service.env["ANKISYNC_NOTIFY"] = "not a url " + webhook.password
    result = service.cli("status")
    assert result.returncode == 1 and "ANKISYNC_NOTIFY=(hidden)" in result.stderr
    assert webhook.password not in result.stderr


def test_an_unknown_service_stops_the_worker_at_start(make_service):
    service = make_service(start=False, ANKISYNC_NOTIFY="nosuchservice://a-token@x")
    result = service.cli("worker")
    assert result.returncode == 1 and "ANKISYNC_NOTIFY: URL 1 (nosuchservice://...)" in result.stderr
    assert "a-token" not in result.stderr


def test_a_notifier_that_hangs_or_refuses_delays_and_fails_no_job(make_service, webhook):
    webhook.hold()  # it takes the message and never answers
    service = failing(make_service, webhook)
    failed_job(service, 1)
    wait_until(lambda: webhook.held == 1, service.logs)
    # while the alert hangs, the next job runs to its end, and the API answers
    failed_job(service, 2)
    assert service.call("GET", "/api/v1/health")[0] == 200
    assert webhook.held >= 1  # still unanswered: no job waited for it
    # Apprise gives the hung message up at its timeout; the cause stays free, so the
    # second failure's alert goes out, and is refused
    webhook.status = 500
    webhook.release()
    wait_until(lambda: service.logs().count("alert job_failed: could not notify") == 2,
               service.logs, timeout=60)
    assert webhook.messages == [] and webhook.password not in service.logs()
    assert service.wait(service.post_card(card(3))[1]["taskId"])[0]["status"] == "failure"
