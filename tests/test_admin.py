"""What a self-hoster runs by hand: `status` and a scripted `setup`."""

import json
import os
import re
import stat
import subprocess

import pytest

from conftest import GOOGLE_KEY
from helpers import card
from service import ROOT, Service


@pytest.mark.slow
def test_status_shows_done_failed_and_waiting_jobs(make_service, account, fake_tts):
    service = make_service()
    service.sync_login(account)
    done = service.wait(service.post_card(card(1))[1]["taskId"])[0]
    fake_tts.valid_keys = {"someone-else"}
    failed = service.wait(service.post_card(card(2))[1]["taskId"])[0]
    assert (done["status"], failed["status"]) == ("success", "failure")
    fake_tts.valid_keys = None
    fake_tts.hold()
    busy = service.post_card(card(3))[1]["taskId"]
    fake_tts.wait_held()  # busy is claimed and speaking: the next card waits
    service.wait(busy, until=("started",))
    service.post_card(card(4))

    result = service.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["worker"]["alive"] and info["queue"]["pending"] == 1
    assert info["queue"]["started"] == 1
    assert info["last24h"] == {"success": 1, "failure": 1}
    assert info["sync"]["username"] == account and info["sync"]["lastOutcome"] == "uploaded"
    assert info["sync"]["lastError"] is None and info["tts"] == "google"
    assert info["dataDir"]["bytes"] > 0

    text = service.cli("status").stdout
    assert "worker     running (pid" in text and "1 pending, 1 started" in text
    assert "1 done, 1 failed" in text and f"logged in as {account}" in text

    fake_tts.release()
    service.stop()
    result = service.cli("status")
    assert result.returncode == 1 and "NOT RUNNING" in result.stdout


def test_setup_from_flags_checks_each_answer(tmp_path, sync_server, account, fake_tts):
    service = Service(tmp_path / "data", ANKISYNC_SYNC_ENDPOINT=sync_server.url,
                      ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url, ANKISYNC_GOOGLE_API_KEY=None)
    result = service.cli("setup", "--username", account, "--tts", "google",
                         "--google-key-file", "-", stdin=f"pass\n{GOOGLE_KEY}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ak_") and result.stdout.count("\n") == 1  # the key alone
    stored = json.loads((service.data_dir / "credentials.json").read_text())
    assert stored["sync"]["username"] == account and stored["google_api_key"] == GOOGLE_KEY
    assert "pass" not in json.dumps(stored["sync"])
    assert stat.S_IMODE(os.stat(service.data_dir / "credentials.json").st_mode) == 0o600
    assert "ANKISYNC_TTS=google" in (service.data_dir / ".env").read_text()
    assert [r["body"]["input"]["text"] for r in fake_tts.requests] == ["ankisync"]

    # run again with nothing to change: the API key is kept
    again = service.cli("setup", stdin="")
    assert again.returncode == 0 and again.stdout == "", again.stderr

    service.api_key = result.stdout.strip()
    service.env.pop("ANKISYNC_GOOGLE_API_KEY", None)
    service.start()
    try:  # the stored key and voice are what the service uses
        job, _ = service.wait(service.post_card()[1]["taskId"])
        assert job["status"] == "success" and job["result"]["audio"]["word"].endswith(".mp3")
        assert job["result"]["synced"], job
    finally:
        service.kill()


def test_setup_says_what_failed(tmp_path, sync_server, account, fake_tts):
    service = Service(tmp_path / "data", ANKISYNC_SYNC_ENDPOINT=sync_server.url,
                      ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url)
    result = service.cli("setup", "--username", account, stdin="wrong-password\n")
    assert result.returncode == 1 and "refused username/password" in result.stderr
    assert "Traceback" not in result.stderr
    result = service.cli("setup", "--tts", "google", "--google-key-file", "-", stdin="not-a-key\n")
    assert result.returncode == 1 and "ANKISYNC_GOOGLE_API_KEY" in result.stderr
    assert "not-a-key" not in result.stderr


def test_log_level_and_google_credentials_from_the_env_file(make_service, fake_tts, tmp_path):
    """DATA_DIR/.env is read like the environment, also for these two."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {  # a service account key; the client signs its own token, nothing is fetched
        "type": "service_account", "project_id": "ankisync-test", "private_key_id": "test",
        "private_key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "client_email": "tts@ankisync-test.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token"}
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps(account))
    service = make_service(start=False, ANKISYNC_LOG_LEVEL=None, ANKISYNC_GOOGLE_API_KEY=None,
                           ANKISYNC_TTS=None)
    service.data_dir.mkdir(parents=True)
    (service.data_dir / ".env").write_text(
        f"ANKISYNC_LOG_LEVEL=DEBUG\nGOOGLE_APPLICATION_CREDENTIALS={key_file}\n")
    fake_tts.valid_keys = None  # it takes the bearer token the client signed
    service.start()
    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success" and job["result"]["audio"]["word"].endswith(".mp3"), job
    assert fake_tts.requests and fake_tts.requests[0]["key"] is None  # Google, by the key file
    log = service.logs()
    assert " DEBUG " in log
    assert f"text-to-speech google with GOOGLE_APPLICATION_CREDENTIALS={key_file}" in log
    status, _, health = service.call("GET", "/api/v1/health")
    assert health["tts"] == "google"

    service.stop()  # the other way: WARNING in the file hides the INFO lines
    (service.data_dir / ".env").write_text("ANKISYNC_LOG_LEVEL=WARNING\n")
    seen = len(service.logs())
    service.start()
    assert service.wait(service.post_card(card(5))[1]["taskId"])[0]["status"] == "success"
    later = service.logs()[seen:]
    assert " INFO " not in later and " DEBUG " not in later, later


def test_a_missing_google_key_file_stops_the_start(make_service, tmp_path):
    service = make_service(start=False)
    service.data_dir.mkdir(parents=True)
    (service.data_dir / ".env").write_text(f"GOOGLE_APPLICATION_CREDENTIALS={tmp_path}/nope.json\n")
    result = subprocess.run([str(ROOT / "run.sh"), "status"], cwd=ROOT, env=service.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"GOOGLE_APPLICATION_CREDENTIALS='{tmp_path}/nope.json' from" in result.stderr
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_messages_and_docs_say_run_sh(make_service):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if name.startswith("tests/") or not (ROOT / name).is_file():
            continue
        text = (ROOT / name).read_text(errors="replace")
        assert not re.search(r"python3? ankisync\.py", text), name

    service = make_service()  # no sync login: the worker says how to make one
    assert service.wait(service.post_card()[1]["taskId"])[0]["status"] == "success"
    assert "not synced: no sync login yet (./run.sh login USER)" in service.logs()
    status, _, body = service.call("POST", "/api/v1/login", {"key": "ak_wrong"}, token=None)
    assert status == 403 and "`./run.sh api-key`" in body["message"], body


def test_help_lists_every_command():
    result = subprocess.run([str(ROOT / "run.sh"), "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("test", "serve", "worker", "setup", "login", "api-key", "status"):
        assert re.search(rf"\b{command}\b", result.stdout), command
    assert "./run.sh test" in result.stdout and "ANKISYNC_DATA_DIR" in result.stdout


def test_status_into_a_closed_pipe_prints_no_traceback(service):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written, as `| head` can be
    try:
        result = subprocess.run([str(ROOT / "run.sh"), "status"], cwd=ROOT, env=service.env,
                                stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert "BrokenPipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    piped = subprocess.run(f"'{ROOT}/run.sh' status | head -1", shell=True, cwd=ROOT,
                           env=service.env, capture_output=True, text=True, timeout=60)
    assert piped.stdout.startswith("worker     running"), piped.stdout
    assert "Traceback" not in piped.stderr, piped.stderr
