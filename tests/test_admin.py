"""What a self-hoster runs by hand: `status` and a scripted `setup`."""

import json
import os
import stat

from conftest import GOOGLE_KEY
from service import CARD, Service


def card(n):
    return dict(CARD, word=f"word{n}", englishExample=f"Sentence {n} with {{{{c1::word{n}}}}}.")


def test_status_shows_done_failed_and_waiting_jobs(make_service, account, fake_tts):
    service = make_service()
    service.sync_login(account)
    done = service.wait(service.post_card(card(1))[1]["taskId"])[0]
    fake_tts.valid_keys = {"someone-else"}
    failed = service.wait(service.post_card(card(2))[1]["taskId"])[0]
    assert (done["status"], failed["status"]) == ("success", "failure")
    fake_tts.valid_keys, fake_tts.delay = None, 3
    busy = service.post_card(card(3))[1]["taskId"]
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

    fake_tts.delay = 0
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
