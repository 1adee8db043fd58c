"""A card from an HTTP request to the sync server, through run.sh, the worker and real parts."""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from anki_server import download_collection, media_files, notes_in, seed_other_device
from helpers import wait_until
from service import CARD


def synced_notes(tmp_path, sync_server, username):
    """The notes and media a fresh second device sees on the server."""
    col = download_collection(tmp_path / f"device-{username}-{time.monotonic_ns()}",
                              sync_server.url, username, "pass")
    try:
        return notes_in(col), media_files(col)
    finally:
        col.close()


def test_card_reaches_the_server_with_both_clips(service, sync_server, account, fake_tts,
                                                 tmp_path):
    service.sync_login(account)
    status, body = service.post_card()
    assert status == 202, body
    assert body["status"] == "pending" and body["statusUrl"] == f"/api/v1/tasks/{body['taskId']}"
    job, seen = service.wait(body["taskId"])
    assert job["status"] == "success", job
    assert seen[-1] == "success" and set(seen) <= {"pending", "started", "success"}
    result = job["result"]
    assert result["synced"] is True and result["noteId"] and len(result["cardIds"]) == 1
    assert job["progress"] == {"current": 3, "total": 3, "step": "done"}
    assert job["attempts"] == 1 and job["error"] is None

    notes, media = synced_notes(tmp_path, sync_server, account)
    assert len(notes) == 1
    note = notes[0]
    assert note["notetype"] == "Custom Cloze" and note["deck"] == "English Vocabulary"
    fields = note["fields"]
    assert fields["Text"] == CARD["englishExample"]
    assert fields["Word"] == CARD["word"]
    assert fields["DefinitionTranslation"] == CARD["definitionTranslation"]
    assert fields["TextTranslation"] == CARD["exampleTranslation"]
    word_clip, text_clip = result["audio"]["word"], result["audio"]["text"]
    assert fields["DefinitionAudio"] == f"[sound:{word_clip}]"
    assert fields["TextAudio"] == f"[sound:{text_clip}]"
    assert {word_clip, text_clip} <= media
    assert word_clip.endswith(".mp3") and "extraordinary" not in word_clip
    # the sentence is spoken without cloze markers or HTML
    spoken = sorted(r["body"]["input"]["text"] for r in fake_tts.requests)
    assert spoken == ["He told the extraordinary story.", "extraordinary"]


def test_first_sync_to_an_empty_account_uploads(service, account):
    service.sync_login(account)
    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success", job
    status, _, health = service.call("GET", "/api/v1/health")
    assert status == 200
    assert health["sync"]["lastOutcome"] == "uploaded" and health["sync"]["lastError"] is None
    assert health["worker"]["alive"] is True


def test_server_keeps_another_clients_notes_and_gains_ours(service, sync_server, account,
                                                           tmp_path):
    seed_other_device(tmp_path / "other", sync_server.url, account, "from my phone")

    service.sync_login(account)
    first = service.wait(service.post_card()[1]["taskId"])[0]
    second = service.wait(service.post_card(dict(CARD, word="tale"))[1]["taskId"])[0]
    assert first["status"] == second["status"] == "success", (first, second)

    notes, _ = synced_notes(tmp_path, sync_server, account)
    fronts = sorted(n["fields"].get("Front") or n["fields"]["Word"] for n in notes)
    assert fronts == ["extraordinary", "from my phone", "tale"]


def test_userscript_requests_work_unchanged(service):
    origin = {"Origin": "https://dictionary.cambridge.org"}  # where the userscript runs
    status, headers, _ = service.call("OPTIONS", "/api/v1/clozeNotes", token=None, headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-access-token"})
    assert 200 <= status < 300
    assert headers["Access-Control-Allow-Origin"] == origin["Origin"]
    allowed = headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("content-type", "x-access-token", "authorization"))
    assert "POST" in headers["Access-Control-Allow-Methods"]

    status, headers, tokens = service.call("POST", "/api/v1/login", {"key": service.api_key},
                                           headers=origin, token=None)
    assert status == 201 and headers["Access-Control-Allow-Origin"] == origin["Origin"]
    import jwt
    payload = jwt.decode(tokens["accessToken"], options={"verify_signature": False})
    assert payload["exp"] - time.time() > 3000  # an hour, in seconds since the epoch

    status, _, _ = service.call("GET", "/api/v1/health", headers=origin,
                                token=tokens["accessToken"])
    assert status == 200
    status, headers, body = service.call("POST", "/api/v1/clozeNotes", dict(CARD), headers={
        **origin, "content-type": "application/json"}, token=tokens["accessToken"])
    assert status == 202 and headers["Access-Control-Allow-Origin"] == origin["Origin"], body
    job, _ = service.wait(body["taskId"])
    assert job["status"] == "success", job


def test_sync_mode_waits_for_the_worker(service, account):
    service.sync_login(account)
    status, body = service.post_card(query="?async=false")
    assert status == 200, body
    assert body["status"] == "ok" and body["noteId"] and body["cardIds"] and body["synced"]
    assert service.job(body["taskId"])["status"] == "success"


def test_before_login_cards_stay_local_then_sync_after_login(service, sync_server, account,
                                                             tmp_path):
    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success" and job["result"]["synced"] is False, job

    service.sync_login(account)  # the login enqueues a sync of what waits
    wait_until(lambda: service.job(job["taskId"])["result"]["synced"],
               lambda: "the card synced:\n" + service.logs())
    notes, media = synced_notes(tmp_path, sync_server, account)
    assert [n["fields"]["Word"] for n in notes] == ["extraordinary"]
    assert set(job["result"]["audio"].values()) <= media


def test_with_no_voice_cards_have_no_audio(make_service, fake_tts):
    service = make_service(ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_TTS="none")
    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success", job
    assert job["result"]["audio"] is None
    assert "ANKISYNC_GOOGLE_API_KEY" in job["result"]["warning"]
    assert fake_tts.requests == []


@pytest.mark.skipif(not shutil.which("espeak-ng") and not os.environ.get("CI"),
                    reason="espeak-ng is not installed (CI installs it)")
def test_offline_voice_without_google_reaches_a_fresh_collection(make_service, sync_server,
                                                                account, fake_tts, tmp_path):
    service = make_service(ANKISYNC_GOOGLE_API_KEY=None)  # ANKISYNC_TTS=auto
    service.sync_login(account)
    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success" and job["result"]["synced"], job
    clips = job["result"]["audio"]
    assert clips["word"].endswith(".wav") and clips["text"].endswith(".wav")
    assert fake_tts.requests == []  # spoken by espeak-ng, offline
    col = download_collection(tmp_path / "device", sync_server.url, account, "pass")
    try:
        note = notes_in(col)[0]
        assert note["fields"]["TextAudio"] == f"[sound:{clips['text']}]"
        media = Path(col.media.dir())
        for name in clips.values():
            data = (media / name).read_bytes()
            assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 4000
    finally:
        col.close()


def test_refused_tts_key_fails_the_job_with_advice(make_service, fake_tts):
    service = make_service(ANKISYNC_GOOGLE_API_KEY="a-revoked-key")
    job, seen = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "failure", job
    assert job["attempts"] == 1 and "retrying" not in seen  # permanent: not retried
    assert job["error"]["type"] == "TTSRefused"
    assert "ANKISYNC_GOOGLE_API_KEY" in job["error"]["message"]
    assert "a-revoked-key" not in job["error"]["message"]
    status, body = service.post_card(query="?async=false")
    assert status == 502 and body["status"] == "failure" and "API key" in body["message"]


@pytest.mark.slow
def test_tts_outage_is_retried_until_it_passes(service, fake_tts, account):
    fake_tts.fail_next(3, 503)
    job, seen = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success", job
    assert "retrying" in seen and job["attempts"] >= 2


def test_sigterm_stops_api_and_worker_with_no_orphans(service):
    pids = service.group_alive()
    assert len(pids) >= 4  # run.sh, the API, the worker and its process worker
    assert service.stop(signal.SIGTERM) == 0
    wait_until(lambda: not service.group_alive(), service.group_alive, 10)
    assert not (service.data_dir / "worker.pid").exists()


@pytest.mark.slow
def test_job_interrupted_by_a_killed_worker_is_recovered_on_restart(make_service, fake_tts):
    service = make_service()
    fake_tts.hold()  # the job is mid-speech when the worker dies
    task_id = service.post_card()[1]["taskId"]
    fake_tts.wait_held()
    service.wait(task_id, until=("started",))
    service.kill()
    service.process.wait(10)
    wait_until(lambda: not service.group_alive(), "every process of the group gone", 10)
    fake_tts.release()
    service.start()
    job, _ = service.wait(task_id)
    assert job["status"] == "success", job


@pytest.mark.slow
def test_hung_job_ends_as_timeout_and_the_next_job_runs(make_service, fake_tts):
    service = make_service(ANKISYNC_TASK_TIMEOUT=2)
    fake_tts.hold()  # no answer before the job's time is up
    task_id = service.post_card()[1]["taskId"]
    job, _ = service.wait(task_id)
    assert job["status"] == "failure" and job["error"]["type"] == "TimeoutError", job
    assert "ANKISYNC_TASK_TIMEOUT" in job["error"]["message"]
    fake_tts.release()
    job, _ = service.wait(service.post_card(dict(CARD, word="next"))[1]["taskId"])
    assert job["status"] == "success", job
