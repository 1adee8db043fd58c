"""Behaviour behind the speed: cards made together share one sync; a text is spoken once."""

from helpers import card


def test_cards_waiting_together_go_up_in_one_sync(make_service, account, fake_tts):
    service = make_service()
    service.sync_login(account)
    fake_tts.hold()  # the first card keeps the worker busy while ten more arrive
    first = service.post_card(card(0))[1]["taskId"]
    fake_tts.wait_held()
    service.wait(first, until=("started",))
    waiting = [service.post_card(card(n))[1]["taskId"] for n in range(1, 11)]
    fake_tts.release()
    for task_id in [first] + waiting:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    syncs = [line for line in service.logs().splitlines() if "worker: synced (" in line]
    # the login's sync, then one for all eleven: the ten that came while the
    # first was spoken joined its batch
    assert len(syncs) == 2, syncs


def test_the_same_text_is_spoken_once(make_service, fake_tts):
    service = make_service()
    first = service.post_card(card(1, "serendipity"))[1]["taskId"]
    second = service.post_card(card(2, "serendipity"))[1]["taskId"]
    jobs = [service.wait(task_id)[0] for task_id in (first, second)]
    assert all(job["status"] == "success" for job in jobs), jobs
    said = [r["body"]["input"]["text"] for r in fake_tts.requests]
    assert said.count("serendipity") == 1 and len(said) == 3, said
    assert jobs[0]["result"]["audio"]["word"] == jobs[1]["result"]["audio"]["word"]
