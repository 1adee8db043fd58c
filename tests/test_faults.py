"""Nothing lost, nothing doubled: real processes killed, real servers stopped.

Each test ends by syncing a fresh collection from the sync server and counting
notes by guid: every accepted card exactly once.
"""

import http.client
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest

import notes
from anki_server import download_collection, notes_in
from helpers import card, request_waiting_at, wait_for_log, wait_until

pytestmark = pytest.mark.slow  # processes killed, servers stopped, hundreds of cards


def server_guids(tmp_path, sync_server, account):
    col = download_collection(tmp_path / f"device-{time.monotonic_ns()}", sync_server.url,
                              account, "pass")
    try:
        return Counter(note["guid"] for note in notes_in(col))
    finally:
        col.close()


def assert_exactly_once(tmp_path, sync_server, account, task_ids):
    guids = server_guids(tmp_path, sync_server, account)
    expected = {notes.note_guid(task_id) for task_id in task_ids}
    duplicates = [g for g, n in guids.items() if n > 1]
    lost = expected - set(guids)
    print(f"accepted {len(task_ids)}, notes on server {sum(guids.values())},"
          f" duplicates {len(duplicates)}, lost {len(lost)}")
    assert not duplicates and not lost and set(guids) == expected


def worker_child(service):
    """The Huey process worker that runs jobs (the consumer's child holding the collection)."""
    collection = str(service.data_dir / "collection.anki2")
    for pid in service.group_alive():
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == collection
                   for fd in os.listdir(f"/proc/{pid}/fd")):
                return pid
        except (FileNotFoundError, ProcessLookupError):
            continue
    raise AssertionError("no process holds the collection")


def web_process(service):
    for pid in service.group_alive():
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            if b"serve" in file.read().split(b"\0"):
                return pid
    raise AssertionError("no web process")


def wait_step(service, task_id, step, timeout=30):
    wait_until(lambda: service.job(task_id)["progress"]["step"] == step,
               f"job {task_id} at step {step}", timeout)


def power_off(service):
    """Everything dies at once: kill -9 the whole process group."""
    service.kill()
    service.process.wait(10)
    wait_until(lambda: not service.group_alive(), "every process of the group gone", 10)


def warmed_up(service):
    """Wait for the worker's warm-up: the sync it makes at start before any note is then
    over, and a sync paused next is a card's own."""
    wait_until(lambda: service.call("GET", "/api/v1/health")[2]["worker"]["ready"],
               "the worker warmed up")


def test_worker_killed_at_each_point_of_a_job(make_service, sync_server, account, fake_tts,
                                              tmp_path):
    service = make_service(ANKISYNC_TASK_TIMEOUT=60)
    service.sync_login(account)
    task_ids = []

    # 1. during text-to-speech: the whole machine goes down
    fake_tts.hold()
    task_ids.append(service.post_card(card(1))[1]["taskId"])
    fake_tts.wait_held()  # the clip is being spoken
    assert service.job(task_ids[-1])["progress"]["step"] == "speaking"
    power_off(service)
    fake_tts.release()
    service.start()
    warmed_up(service)
    service.wait(task_ids[0], timeout=90)  # its sync is not the one paused next

    # 2. the note is added, the sync hangs: the worker child alone is killed
    #    (as by the OOM killer); Huey starts a new one, which recovers the job
    sync_server.pause()
    try:
        task_ids.append(service.post_card(card(2))[1]["taskId"])
        wait_step(service, task_ids[-1], "syncing")
        os.kill(worker_child(service), signal.SIGKILL)
    finally:
        sync_server.resume()

    # 3. in the middle of a sync that hangs: the whole machine goes down
    warmed_up(service)  # the worker Huey started in place of the one killed
    service.wait(task_ids[1], timeout=90)
    sync_server.pause()
    try:
        task_ids.append(service.post_card(card(3))[1]["taskId"])
        wait_step(service, task_ids[-1], "syncing")
        wait_until(lambda: request_waiting_at(sync_server.port),
                   "the sync request to reach the paused server")
        power_off(service)
    finally:
        sync_server.resume()
    service.start()

    for task_id in task_ids:
        job, _ = service.wait(task_id, timeout=90)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert_exactly_once(tmp_path, sync_server, account, task_ids)


def test_web_process_killed_while_clients_post(make_service, sync_server, account, tmp_path):
    service = make_service(ANKISYNC_CARD_BURST=5000)  # 1,000 cards from one login, and retries
    service.sync_login(account)
    service.login()
    keys = [str(uuid.uuid4()) for _ in range(4 * 250)]
    answers = {}

    def client(my_keys):
        for n, key in my_keys:
            try:
                status, _, body = service.call("POST", "/api/v1/clozeNotes", card(n),
                                               headers={"Idempotency-Key": key})
                answers[key] = (status, body)
            except (OSError, http.client.HTTPException):
                answers[key] = (None, None)  # no (whole) answer: the client will retry
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(list(enumerate(keys))[i::4],))
               for i in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(answers) >= 60, "60 answers", 60, every=0.005)  # kill mid-burst
    os.kill(web_process(service), signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    accepted = {key: body["taskId"] for key, (status, body) in answers.items() if status == 202}
    assert accepted and len(accepted) < len(keys), "the kill should land mid-burst"
    print(f"before the kill: {len(accepted)} answered 202,"
          f" {sum(1 for status, _ in answers.values() if status is None)} got no answer")
    assert all(status in (202, None) for status, _ in answers.values())
    # run.sh stops the worker too when the web process dies, and exits non-zero
    assert service.process.wait(45) != 0

    service.start()
    service.login()
    task_ids = dict(accepted)
    for n, key in enumerate(keys):  # every client retries what it has no answer for
        status, _, body = service.call("POST", "/api/v1/clozeNotes", card(n),
                                       headers={"Idempotency-Key": key})
        assert status in (200, 202), body
        if key in accepted:
            assert status == 200 and body["taskId"] == accepted[key]
        task_ids[key] = body["taskId"]
    for task_id in set(task_ids.values()):
        job, _ = service.wait(task_id, timeout=120)
        assert job["status"] == "success", job
    assert_exactly_once(tmp_path, sync_server, account, set(task_ids.values()))


def test_sync_server_down_during_a_burst(make_service, sync_server, account, tmp_path):
    service = make_service(ANKISYNC_MAX_ATTEMPTS=1000)  # no job gives up on a slow machine
    service.sync_login(account)
    sync_server.stop()
    try:
        task_ids = [service.post_card(card(n))[1]["taskId"] for n in range(10)]
        job, seen = service.wait(task_ids[0], until=("retrying",))
        assert job["attempts"] >= 1 and job["error"]["type"] == "SyncUnavailable", job
        assert "ANKISYNC_SYNC_ENDPOINT" in job["error"]["message"]
        status, _, health = service.call("GET", "/api/v1/health")
        assert health["sync"]["lastError"].startswith("SyncUnavailable")
        for task_id in task_ids:  # every card waits for the server
            service.wait(task_id, until=("retrying",))
    finally:
        sync_server.start()
    for task_id in task_ids:
        job, _ = service.wait(task_id, timeout=60)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert_exactly_once(tmp_path, sync_server, account, task_ids)


def test_tts_server_errors_are_retried_and_a_refused_key_is_not(make_service, fake_tts):
    service = make_service()
    fake_tts.fail_next(2, 500)
    fake_tts.fail_next(2, 503)
    job, seen = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success" and "retrying" in seen and job["attempts"] >= 3, job
    fake_tts.valid_keys = {"another-key"}
    job, seen = service.wait(service.post_card(card(2))[1]["taskId"])
    assert job["status"] == "failure" and job["attempts"] == 1, job
    assert "ANKISYNC_GOOGLE_API_KEY" in job["error"]["message"]


def test_concurrent_load_loses_nothing(make_service, sync_server, account, tmp_path):
    service = make_service(ANKISYNC_CARD_BURST=5000)  # 800 cards from one login at once
    service.sync_login(account)
    service.login()
    results, errors = [], []

    def client(offset):
        for n in range(offset, offset + 50):
            status, _, body = service.call("POST", "/api/v1/clozeNotes", card(n))
            (results if status == 202 else errors).append(body if status == 202 else (status, body))

    threads = [threading.Thread(target=client, args=(i * 50,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(results) == 800
    task_ids = [body["taskId"] for body in results]
    for task_id in task_ids:
        job, _ = service.wait(task_id, timeout=300)
        assert job["status"] == "success", job
    assert "database is locked" not in service.logs()
    assert_exactly_once(tmp_path, sync_server, account, task_ids)


def test_sigterm_lets_the_running_job_finish(make_service, fake_tts):
    service = make_service()
    fake_tts.hold()
    task_id = service.post_card()[1]["taskId"]
    fake_tts.wait_held()
    wait_step(service, task_id, "speaking")
    service.process.send_signal(signal.SIGTERM)
    wait_for_log(service, "Shutting down gracefully")  # the signal came mid-speech
    fake_tts.release()
    assert service.process.wait(45) == 0
    service.process.stdout.close()
    assert service.group_alive() == []
    service.start()  # only to read the job: it finished before the stop
    job = service.job(task_id)
    assert job["status"] == "success" and job["attempts"] == 1, job


def test_queue_holds_no_pickles(make_service, fake_tts):
    import sqlite3
    # the job waits 3 s in Huey's schedule for its retry: time to read the queue
    service = make_service(ANKISYNC_RETRY_DELAY=3, ANKISYNC_RETRY_MAX_DELAY=3)
    fake_tts.fail_next(1, 503)
    task_id = service.post_card()[1]["taskId"]
    service.wait(task_id, until=("retrying",))
    conn = sqlite3.connect(service.data_dir / "ankisync.db")

    def queued():  # the retry is scheduled just after the job is marked retrying
        return conn.execute("SELECT data FROM schedule UNION ALL SELECT data FROM task").fetchall()
    wait_until(queued, "the retry in Huey's queue")
    rows = queued()
    assert rows and all(json.loads(data)["args"] == [task_id] for (data,) in rows)
    assert service.wait(task_id)[0]["status"] == "success"


# --- issue 11: found by trying it ------------------------------------------------------

def test_an_error_escaping_a_job_leaves_it_retrying_with_the_error(service):
    from anki.collection import Collection
    # Another program holds the collection, as a second instance would: every
    # open by the worker fails with anki's DBError "Anki already open".
    other = Collection(str(service.data_dir / "collection.anki2"))
    try:
        task_id = service.post_card()[1]["taskId"]
        job, _ = service.wait(task_id, until=("retrying", "failure"))
        assert job["status"] == "retrying", job
        assert job["error"]["type"] == "WorkerTrouble", job
        assert "another program" in job["error"]["message"], job
    finally:
        other.close()
    job, _ = service.wait(task_id)
    assert job["status"] == "success" and job["attempts"] >= 2, job


def test_a_job_left_started_is_shown_and_run_again(service):
    import sqlite3
    lost = service.wait(service.post_card()[1]["taskId"])[0]["taskId"]
    # As a run that could not record its outcome (a full disk) leaves it: still
    # started, its deadline past
    with sqlite3.connect(service.data_dir / "ankisync.db") as conn:
        conn.execute("UPDATE ankisync_jobs SET status = 'started', completed_at = NULL,"
                     " retry_at = ? WHERE id = ?", (time.time() - 1, lost))
    status, _, health = service.call("GET", "/api/v1/health")
    assert status == 200 and health["stuckJobs"] == 1, health
    other = service.post_card(card(2))[1]["taskId"]
    for task_id in (other, lost):
        job, _ = service.wait(task_id)
        assert job["status"] == "success", job
    assert service.job(lost)["attempts"] == 2
    assert service.call("GET", "/api/v1/health")[2]["stuckJobs"] == 0


def test_broken_tts_answers_are_retried(service, fake_tts):
    for n, mode in enumerate(("bad_json", "bad_base64", "html")):
        fake_tts.fail_next(1, mode)
        job, _ = service.wait(service.post_card(card(n))[1]["taskId"])
        assert job["status"] == "success" and job["attempts"] == 2, (mode, job)
    assert "InternalError" not in service.logs()


@pytest.mark.parametrize("answer_after_the_alarm", [False, True])
def test_a_timeout_in_an_anki_call_is_a_retry_and_ends_in_success(
        make_service, sync_server, account, tmp_path, answer_after_the_alarm):
    service = make_service(ANKISYNC_TASK_TIMEOUT=2)
    service.sync_login(account)
    wait_for_log(service, "synced (")  # the login's sync is done
    sync_server.pause()  # a sync hangs inside anki, until anki's 5 s network timeout
    try:
        task_id = service.post_card()[1]["taskId"]
        wait_step(service, task_id, "syncing")
        if answer_after_the_alarm:
            # The server answers after the task's 2 s alarm went off inside anki's call
            # and before anki gave up: the card reaches the server, and anki's code
            # turns the alarm's exception into a TypeError.
            alarm_passed = time.monotonic() + 3
            while time.monotonic() < alarm_passed:
                time.sleep(0.05)
            sync_server.resume()
        job, _ = service.wait(task_id, until=("retrying", "failure", "success"), timeout=30)
        assert job["status"] != "failure", job
        if not answer_after_the_alarm:
            assert job["status"] == "retrying" and job["error"]["type"] == "TimeoutError", job
            assert "ANKISYNC_TASK_TIMEOUT" in job["error"]["message"]
    finally:
        sync_server.resume()
    job, _ = service.wait(task_id, timeout=60)
    assert job["status"] == "success" and job["result"]["synced"], job
    assert "InternalError" not in service.logs() and "timed out after" in service.logs()
    assert_exactly_once(tmp_path, sync_server, account, [task_id])


def test_a_clip_half_written_by_a_killed_worker_reaches_no_device(make_service, sync_server,
                                                                  account, fake_tts, tmp_path):
    from anki_server import download_collection, media_files
    service = make_service()
    service.sync_login(account)
    wait_for_log(service, "synced (")
    fake_tts.hold()
    task_id = service.post_card()[1]["taskId"]
    fake_tts.wait_held()
    # The worker dies while the clip is on its way. What a kill in the middle of
    # writing a clip leaves, an older ankisync left in the media folder; ours in tmp/.
    media, scratch = service.data_dir / "collection.media", service.data_dir / "tmp"
    (media / ".ankisync-killed.tmp").write_bytes(b"\xff\xfb half a clip")
    scratch.mkdir(exist_ok=True)
    (scratch / ".ankisync-killed2.tmp").write_bytes(b"\xff\xfb half a clip")
    os.kill(worker_child(service), signal.SIGKILL)
    fake_tts.release()
    job, _ = service.wait(task_id)
    assert job["status"] == "success" and job["result"]["synced"], job
    assert sorted(p.name for p in media.iterdir()) == sorted(job["result"]["audio"].values())
    assert list(scratch.iterdir()) == []
    col = download_collection(tmp_path / "device", sync_server.url, account, "pass")
    try:
        assert media_files(col) == set(job["result"]["audio"].values())
    finally:
        col.close()


@pytest.mark.parametrize("waiting_for", ["sync", "collection"])
def test_a_new_voice_does_not_speak_waiting_cards_again(make_service, sync_server, account,
                                                        fake_tts, tmp_path, waiting_for):
    from anki.collection import Collection
    from anki_server import download_collection, media_files
    service = make_service()
    service.sync_login(account)
    wait_for_log(service, "synced (")
    if waiting_for == "sync":  # spoken and added, not synced
        sync_server.stop()
    else:  # spoken, not added: another program holds the collection
        service.stop()
        other = Collection(str(service.data_dir / "collection.anki2"))
        service.start()
    try:
        task_id = service.post_card()[1]["taskId"]
        service.wait(task_id, until=("retrying",))
        assert service.stop() == 0
    finally:
        if waiting_for == "sync":
            sync_server.start()
        else:
            other.close()
    service.env["ANKISYNC_TTS_VOICE"] = "en-GB-Wavenet-B"
    service.start()
    job, _ = service.wait(task_id)
    assert job["status"] == "success" and job["result"]["synced"], job
    voices = [r["body"]["voice"]["name"] for r in fake_tts.requests]
    assert voices == ["en-US-Wavenet-D"] * 2, voices  # paid once
    col = download_collection(tmp_path / "device", sync_server.url, account, "pass")
    try:
        [note] = notes_in(col)
        clips = job["result"]["audio"]
        assert note["fields"]["DefinitionAudio"] == f"[sound:{clips['word']}]"
        assert note["fields"]["TextAudio"] == f"[sound:{clips['text']}]"
        assert media_files(col) == set(clips.values())  # no unused clip uploaded
    finally:
        col.close()


def test_jobs_recovered_after_a_crash_sync_in_one_batch(make_service, sync_server, account,
                                                        fake_tts, tmp_path):
    service = make_service()
    service.sync_login(account)
    wait_for_log(service, "synced (")
    fake_tts.hold()
    first = service.post_card(card(0))[1]["taskId"]
    fake_tts.wait_held()
    fake_tts.wait_held()  # both clips of the first card: the worker is busy
    task_ids = [service.post_card(card(n))[1]["taskId"] for n in range(1, 9)]
    fake_tts.release()
    fake_tts.hold()  # the eight waiting cards are claimed together, then held
    fake_tts.wait_held()
    wait_until(lambda: all(service.job(t)["status"] == "started" for t in task_ids),
               lambda: "the eight jobs started:\n" + service.logs())
    power_off(service)  # eight jobs left started
    fake_tts.release()
    logged = len(service.logs())
    service.start()
    for task_id in [first] + task_ids:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    syncs = service.logs()[logged:].count("synced (")
    assert syncs <= 2, syncs  # the sync before adding, and the batch's own
    assert_exactly_once(tmp_path, sync_server, account, [first] + task_ids)


@pytest.mark.parametrize("server_down_at_restore", [False, True])
def test_readme_backup_and_restore_with_waiting_cards_makes_no_duplicates(
        make_service, sync_server, account, fake_tts, tmp_path, server_down_at_restore):
    service = make_service(name="data")
    service.sync_login(account)
    first = service.wait(service.post_card(card(0))[1]["taskId"])[0]
    assert first["status"] == "success" and first["result"]["synced"], first
    fake_tts.status = 503  # cards wait
    waiting = [service.post_card(card(n))[1]["taskId"] for n in range(1, 4)]
    for task_id in waiting:
        service.wait(task_id, until=("retrying",))

    def shell(script):  # the README's commands, ~/ankisync being tmp_path
        done = subprocess.run(["bash", "-euc", script], cwd=tmp_path, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr

    assert service.stop() == 0
    shell("(umask 077; tar -czf backup.tar.gz data)")
    fake_tts.status = 200
    service.start()
    for task_id in waiting:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert service.stop() == 0

    shell("rm -rf data && tar -xzf backup.tar.gz && chmod 700 data"
          " && chmod 600 data/credentials.json")
    if server_down_at_restore:  # no sync can bring the server's copies before adding
        sync_server.stop()
        try:
            service.start()
            for task_id in waiting:
                service.wait(task_id, until=("retrying",))
        finally:
            sync_server.start()
    else:
        service.start()
    for task_id in waiting:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert_exactly_once(tmp_path, sync_server, account, [first["taskId"]] + waiting)


def test_moving_to_another_sync_server_carries_every_card_and_clip(make_service, sync_server,
                                                                   account, tmp_path):
    from anki_server import SyncServer, download_collection, media_files
    service = make_service()
    service.sync_login(account)
    first = service.wait(service.post_card(card(0))[1]["taskId"])[0]
    assert first["status"] == "success" and first["result"]["synced"], first
    with SyncServer(tmp_path / "new-server", users={"mover": "pass"}) as new:
        assert service.stop() == 0
        service.env["ANKISYNC_SYNC_ENDPOINT"] = new.url
        service.start()
        second = service.wait(service.post_card(card(1))[1]["taskId"])[0]
        assert second["status"] == "failure", second
        assert "./run.sh login" in second["error"]["message"], second
        service.sync_login("mover")  # what the message says, while the service runs
        jobs = [service.wait(job["taskId"], until=("success",))[0] for job in (first, second)]
        assert all(job["result"]["synced"] for job in jobs), jobs
        col = download_collection(tmp_path / "device", new.url, "mover", "pass")
        try:
            words = sorted(note["fields"]["Word"] for note in notes_in(col))
            assert words == ["word0", "word1"], words
            clips = {clip for job in jobs for clip in job["result"]["audio"].values()}
            assert media_files(col) == clips
        finally:
            col.close()


def test_retrying_jobs_sync_in_one_batch(make_service, sync_server, account, tmp_path):
    service = make_service(ANKISYNC_MAX_ATTEMPTS=1000)  # no job gives up on a slow machine
    service.sync_login(account)
    wait_for_log(service, "synced (")
    sync_server.stop()
    try:
        task_ids = [service.post_card(card(n))[1]["taskId"] for n in range(8)]
        for task_id in task_ids:
            service.wait(task_id, until=("retrying",))
        logged = len(service.logs())
    finally:
        sync_server.start()
    for task_id in task_ids:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    syncs = service.logs()[logged:].count("synced (")
    assert syncs <= 3, syncs  # not one per job
    assert_exactly_once(tmp_path, sync_server, account, task_ids)
