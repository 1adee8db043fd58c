"""What a card waits for, cut to the protocol's floor: the media sync beside the
collection sync, a worker warm before the first card, the next cards spoken during
a sync. Each is checked by what the sync server and the TTS server see, in order."""

import collections

import pytest

from anki_server import download_collection, notes_in
from helpers import card, wait_until
from sync_proxy import SyncProxy


@pytest.fixture
def proxy(sync_server):
    with SyncProxy(sync_server.url) as proxy:
        yield proxy


def forget_seen(proxy):
    with proxy.arrived:
        proxy.seen.clear()


def succeeds(service, task_id):
    job, _ = service.wait(task_id)
    assert job["status"] == "success" and job["result"]["synced"], job
    return job


@pytest.mark.parametrize("linked", [False, True], ids=["data-dir", "symlinked-data-dir"])
def test_the_media_sync_starts_while_the_collection_sync_runs(make_service, proxy, account,
                                                               tmp_path, linked):
    if linked:  # /proc names the files by their real path
        (tmp_path / "real").mkdir(mode=0o700)
        (tmp_path / "svc").symlink_to(tmp_path / "real")
    service = make_service(ANKISYNC_SYNC_ENDPOINT=proxy.url)
    service.sync_login(account)
    succeeds(service, service.post_card(card(1))[1]["taskId"])

    # The collection sync's last request waits for the media sync's first, which waits
    # for the collection sync's start. Anki's media thread needs the collection's lock
    # a moment before its first request: started without waiting for that, it sat
    # behind the whole collection sync.
    forget_seen(proxy)
    proxy.answers = {"/msync/begin": iter(["after /sync/start"]),
                     "/sync/finish": iter(["after /msync/begin"])}
    job = succeeds(service, service.post_card(card(2))[1]["taskId"])
    seen = list(proxy.seen)
    assert seen.index("/msync/begin") < seen.index("/sync/finish"), seen
    assert "/msync/uploadChanges" in seen  # the clips went, in this sync
    assert set(job["result"]["audio"].values())
    assert "the media sync had not started" not in service.logs()


def health_worker(service):
    status, _, body = service.call("GET", "/api/v1/health")
    assert status == 200, body
    return body["worker"]


def test_a_restarted_worker_warms_up_before_the_first_card(make_service, proxy, account):
    service = make_service(ANKISYNC_SYNC_ENDPOINT=proxy.url)
    service.sync_login(account)
    succeeds(service, service.post_card(card(1))[1]["taskId"])
    assert service.stop() == 0

    # While its first sync is held, the worker is alive but not ready.
    forget_seen(proxy)
    proxy.answers = {"/sync/meta": iter(["hold"])}
    proxy.released.clear()
    service.start()
    proxy.holding.wait(30)
    worker = health_worker(service)
    assert worker["alive"] is True and worker["ready"] is False, worker
    proxy.release()  # that sync fails: warm all the same, the first card syncs first itself
    wait_until(lambda: health_worker(service)["ready"], "worker ready after a failed sync")
    forget_seen(proxy)
    succeeds(service, service.post_card(card(2))[1]["taskId"])
    assert proxy.seen.count("/sync/meta") == 2, proxy.seen  # its pull, then its own sync

    # Restarted again with the sync server there: Google's client is built and the
    # sync before the first notes is done at start, so a card pays for neither.
    assert service.stop() == 0
    forget_seen(proxy)
    service.start()
    wait_until(lambda: health_worker(service)["ready"], "worker ready")
    assert "/sync/meta" in proxy.seen
    assert service.logs().count("Google text-to-speech client for") == 3  # one per start
    forget_seen(proxy)
    succeeds(service, service.post_card(card(3))[1]["taskId"])
    assert proxy.seen.count("/sync/meta") == 1, proxy.seen  # only the card's own sync
    assert service.logs().count("Google text-to-speech client for") == 3


def test_cards_waiting_are_spoken_while_the_batch_before_them_syncs(
        make_service, proxy, account, fake_tts, tmp_path):
    # a task timeout of 120 s gives each sync request 30 s: the pause below outlasts the wait
    service = make_service(ANKISYNC_SYNC_ENDPOINT=proxy.url, ANKISYNC_CARD_BURST=1000,
                           ANKISYNC_MAX_QUEUED=1000, ANKISYNC_TASK_TIMEOUT=120)
    service.sync_login(account)
    succeeds(service, service.post_card(card(0))[1]["taskId"])

    # 60 cards wait while the first one's voice is held; a batch takes 50 of them.
    fake_tts.hold()
    cards = [card(n) for n in range(1, 61)]
    task_ids = [service.post_card(cards[0])[1]["taskId"]]
    fake_tts.wait_held()
    task_ids += [service.post_card(one)[1]["taskId"] for one in cards[1:]]
    proxy.released.clear()
    proxy.answers = {"/sync/finish": iter(["pause"])}
    fake_tts.release()

    # The batch's sync is paused before its end: the ten cards left are spoken meanwhile.
    proxy.holding.wait(30)
    spoken = lambda: collections.Counter(r["body"]["input"]["text"] for r in fake_tts.requests)
    wanted = {one["word"] for one in cards}
    wait_until(lambda: wanted <= set(spoken()), lambda: f"all words spoken: {spoken()}",
               timeout=20)
    assert not proxy.released.is_set()
    waiting = [task_id for task_id in task_ids if service.job(task_id)["status"] == "pending"]
    assert len(waiting) == 10
    status, _, body = service.call("DELETE", f"/api/v1/tasks/{waiting[-1]}")
    assert status == 200, body  # a card spoken ahead can still be cancelled

    proxy.release()
    for task_id in task_ids:
        if task_id != waiting[-1]:
            succeeds(service, task_id)
    assert service.job(waiting[-1])["status"] == "failure"
    assert max(spoken().values()) == 1  # no clip asked for twice
    col = download_collection(tmp_path / "device", proxy.url, account, "pass")
    try:
        words = {note["fields"]["Word"] for note in notes_in(col)}
    finally:
        col.close()
    cancelled = cards[task_ids.index(waiting[-1])]["word"]
    assert words == {one["word"] for one in cards if one["word"] != cancelled} | {"word0"}


def test_a_full_upload_to_a_new_server_waits_for_the_media_sync_beside_it(
        make_service, sync_server, account, tmp_path):
    # Against a new, empty server the media sync beside the collection sync sends the
    # new clips, and so takes the server's mark. Aborted then, before its count check,
    # for the full upload, the media sync after it found nothing to do: the older
    # card's clips never reached the new server, and the jobs said synced.
    from anki_server import SyncServer, media_files

    service = make_service()
    service.sync_login(account)
    first = succeeds(service, service.post_card(card(1))[1]["taskId"])
    with SyncServer(tmp_path / "new-server", users={"mover": "pass"}) as new, \
            SyncProxy(new.url) as proxy:
        assert service.stop() == 0
        service.env["ANKISYNC_SYNC_ENDPOINT"] = proxy.url
        service.start()
        second = service.wait(service.post_card(card(2))[1]["taskId"])[0]
        assert second["status"] == "failure", second  # the login is for the old server
        # the collection sync learns it must upload only once the media sync is at its
        # count check, which waits for that upload (3 s at most: then it goes on)
        proxy.after_timeout = 3
        proxy.answers = {"/sync/meta": iter(["after /msync/mediaSanity"]),
                         "/msync/mediaSanity": iter(["after /sync/upload"])}
        service.sync_login("mover")
        jobs = [service.wait(job["taskId"], until=("success",))[0] for job in (first, second)]
        col = download_collection(tmp_path / "device", new.url, "mover", "pass")
        try:
            clips = {clip for job in jobs for clip in job["result"]["audio"].values()}
            assert media_files(col) == clips
        finally:
            col.close()
