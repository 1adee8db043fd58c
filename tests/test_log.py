"""What the service and its commands say in their log: true, and once per event."""

import os
import shutil

import pytest

from anki_server import free_port
from conftest import GOOGLE_KEY
from service import Service

NO_VOICE = "no voice: cards will be made without audio"
needs_espeak = pytest.mark.skipif(not shutil.which("espeak-ng") and not os.environ.get("CI"),
                                  reason="espeak-ng is not installed (CI installs it)")


@needs_espeak
def test_setup_says_no_voice_only_when_there_is_none(tmp_path, fake_tts):
    service = Service(tmp_path / "data", ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url,
                      ANKISYNC_GOOGLE_API_KEY=None)
    first = service.cli("setup", "--tts", "google", "--google-key-file", "-",
                        stdin=f"{GOOGLE_KEY}\n")
    assert first.returncode == 0 and "voice google works" in first.stderr, first.stderr
    assert NO_VOICE not in first.stderr

    stored = service.cli("setup", "--tts", "google")  # the key stored by the first run
    assert stored.returncode == 0 and "voice google works" in stored.stderr, stored.stderr
    assert NO_VOICE not in stored.stderr

    espeak = service.cli("setup", "--tts", "espeak")
    assert espeak.returncode == 0 and "voice espeak works" in espeak.stderr, espeak.stderr
    assert NO_VOICE not in espeak.stderr

    silent = service.cli("setup", "--tts", "none")
    assert silent.returncode == 0 and NO_VOICE in silent.stderr, silent.stderr
    assert "works" not in silent.stderr


@pytest.mark.parametrize("voice, said", [
    pytest.param("espeak", "text-to-speech espeak (espeak-ng), voice en-us", marks=needs_espeak),
    ("none", "text-to-speech none (cards without audio)"),
])
def test_start_up_log_names_the_voice_in_use_and_where_it_listens(make_service, voice, said):
    connect = f"127.0.0.1:{free_port()}" if voice == "espeak" else ""
    service = make_service(ANKISYNC_TTS=voice, ANKISYNC_ANKICONNECT_LISTEN=connect)
    log = service.logs()
    assert said in log, log
    assert "en-US-Wavenet-D" not in log  # the Google voice, which is not in use
    assert f"API on http://127.0.0.1:{service.port}" in log
    if connect:
        assert f"AnkiConnect on http://{connect}" in log
    else:
        assert "AnkiConnect off (ANKISYNC_ANKICONNECT_LISTEN is empty)" in log


def test_a_login_and_a_card_are_logged_once_each(make_service, account):
    service = make_service()
    login = service.sync_login(account)
    logged = [line for line in login.stderr.splitlines() if "logged in" in line]
    assert len(logged) == 1 and f"as {account}" in logged[0], login.stderr

    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success", job
    added = [line for line in service.logs().splitlines()
             if f"job {job['taskId']}:" in line and "note" in line and "added" in line]
    assert len(added) == 1, added
    assert str(job["result"]["noteId"]) in added[0]
