"""A full disk under the data dir: 507 for new cards, the worker waits, nothing accepted is lost.

The data dir is a real 16 MB tmpfs, filled with a real file (root only: CI is root).
"""

import errno
import http.server
import json
import os
import subprocess
import threading
import urllib.request

import pytest

from helpers import card, wait_until
from test_faults import assert_exactly_once

pytestmark = pytest.mark.slow  # a real full file system, filled and freed


def fill(mount, chunk=1 << 20):
    """Fill the filesystem at mount to the last byte with one file; returns its path."""
    path = mount / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (chunk, 4096, 1):
            try:
                while True:
                    os.write(fd, bytes(chunk))
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs, unmounted at the end (after the services on it are gone)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: mounting a tmpfs must work there")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def service_on(make_service, mount, tmp_path, **settings):
    service = make_service("disk/data", start=False, **settings)
    service.log_path = tmp_path / "service.log"  # the log stays off the full disk
    return service.start()


def health(service):
    status, _, body = service.call("GET", "/api/v1/health")
    assert status == 200, body
    return body



def assert_quiet_log(service):
    """No traceback, and one line per change of state, not one per poll."""
    log = service.logs()
    assert "Traceback" not in log, log
    assert log.count("disk full (") <= 3, log
    assert log.count("disk has room again") <= 3, log


def test_full_disk_refuses_cards_with_507_and_recovers(small_disk, make_service, account,
                                                      sync_server, tmp_path):
    service = service_on(make_service, small_disk, tmp_path)
    service.sync_login(account)
    accepted = []
    status, body = service.post_card(card(1))
    assert status == 202, body
    accepted.append(body["taskId"])
    assert service.wait(body["taskId"])[0]["status"] == "success"

    filler = fill(small_disk)
    for n in range(2, 6):
        status, body = service.post_card(card(n))
        assert status == 507, body
        assert "disk holding the data dir" in body["message"] and "is full" in body["message"]
        assert str(service.data_dir) in body["message"] and "free some space" in body["message"]
    info = health(service)
    assert info["status"] == "disk full" and info["disk"]["full"] is True, info
    assert info["worker"]["alive"] is True
    status_text = service.cli("status").stdout
    assert "disk       FULL" in status_text, status_text
    wait_until(lambda: "disk full (" in service.logs(), "the worker to log the full disk", 60)

    filler.unlink()
    for n in range(6, 9):
        status, body = service.post_card(card(n))
        assert status == 202, body
        accepted.append(body["taskId"])
    for task_id in accepted:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert health(service)["status"] == "ok"
    assert_exactly_once(tmp_path, sync_server, account, accepted)
    assert_quiet_log(service)


def test_disk_filling_while_cards_arrive_never_gives_500_nor_loses_a_202(
        small_disk, make_service, account, sync_server, tmp_path):
    """The disk fills between requests and within them: each answer is 202 (stored) or 507."""
    service = service_on(make_service, small_disk, tmp_path)
    service.sync_login(account)
    service.login()  # the token first: a login writes too, and gets 507 on a full disk
    answers, done = [], threading.Event()

    def post():
        n = after = 0
        while after < 3:  # and a few once the disk is full, however fast it filled
            after += done.is_set()
            n += 1
            answers.append(service.post_card(card(n)))

    poster = threading.Thread(target=post)
    poster.start()
    try:
        filler = fill(small_disk, chunk=64 * 1024)
    finally:
        done.set()
        poster.join()
    statuses = {status for status, _ in answers}
    assert statuses <= {202, 507}, [body for status, body in answers if status not in (202, 507)]
    assert 507 in statuses
    filler.unlink()
    accepted = [body["taskId"] for status, body in answers if status == 202]
    for task_id in accepted:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert_exactly_once(tmp_path, sync_server, account, accepted)
    assert "Traceback" not in service.logs()


class HeldTTS:
    """A switch in front of the fake TTS: requests wait until released, then pass on."""

    def __init__(self, upstream):
        self.released = threading.Event()
        self.arrived = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                held.arrived.set()
                held.released.wait(60)
                request = urllib.request.Request(
                    upstream + self.path, data=body, method="POST",
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() in ("content-type", "x-goog-api-key")})
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, data = answer.status, answer.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()


def test_disk_fills_while_jobs_wait_and_none_is_lost(small_disk, make_service, account,
                                                    sync_server, fake_tts, tmp_path):
    held = HeldTTS(fake_tts.url)
    try:
        service = service_on(make_service, small_disk, tmp_path,
                             ANKISYNC_GOOGLE_TTS_ENDPOINT=held.url)
        service.sync_login(account)
        accepted = []
        for n in range(1, 7):
            status, body = service.post_card(card(n))
            assert status == 202, body
            accepted.append(body["taskId"])
        assert held.arrived.wait(60), service.logs()  # the worker is speaking the first ones
        filler = fill(small_disk)
        held.released.set()  # the clips now meet a full disk
        wait_until(lambda: "disk full (" in service.logs(), "the worker to see the full disk", 60)
        assert health(service)["status"] == "disk full"
        for task_id in accepted:  # waiting, none failed
            assert service.job(task_id)["status"] in ("pending", "started", "retrying")

        filler.unlink()
        for task_id in accepted:
            job, _ = service.wait(task_id)
            assert job["status"] == "success" and job["result"]["synced"], job
            assert job["result"]["audio"]["word"].endswith(".mp3")
        assert health(service)["status"] == "ok"
        assert_exactly_once(tmp_path, sync_server, account, accepted)
        assert_quiet_log(service)
        assert json.loads(json.dumps(health(service)["disk"]))["full"] is False
    finally:
        held.close()
