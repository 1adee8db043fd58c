"""AnkiConnect's card actions, through the worker's AnkiConnect port, on a real collection."""

import json
import sqlite3

import pytest

from anki_server import download_collection, free_port
from helpers import wait_for_log, wait_until
from test_ankiconnect import (ac, keyed, basic, Client, start_with_ankiconnect,  # noqa: F401
                              wait_for_port)  # ac and keyed are the fixtures

NO_CARD = 1  # an id no card has


def new_card(ac, front):
    note_id = ac("addNote", note=basic(front))
    [card_id] = ac("findCards", query=f"nid:{note_id}")
    return note_id, card_id


def test_ease_factors_mod_times_and_notes(ac):
    note_id, card_id = new_card(ac, "ease factors")
    [factor, missing] = ac("getEaseFactors", cards=[card_id, NO_CARD])
    assert isinstance(factor, int) and missing is None
    assert ac("setEaseFactors", cards=[card_id, NO_CARD], easeFactors=[4100, 3800]) == [True, False]
    assert ac("getEaseFactors", cards=[card_id]) == [4100]
    [info] = ac("cardsInfo", cards=[card_id])
    assert info["factor"] == 4100
    assert ac("cardsModTime", cards=[card_id, NO_CARD]) == [
        {"cardId": card_id, "mod": info["mod"]}, {}]
    assert ac("cardsToNotes", cards=[card_id, card_id, NO_CARD]) == [note_id]
    assert ac.error("cardsToNotes", cards=["1) or (1=1"]) == (
        "cards must be a list of card ids (integers)")
    assert ac.error("setEaseFactors", cards=[card_id]) == (
        "setEaseFactors: missing parameter: easeFactors")


def test_set_specific_value_of_card(ac):
    _, card_id = new_card(ac, "specific value")
    set_value = "setSpecificValueOfCard"
    assert ac(set_value, card=card_id, keys=["flags"], newValues=[3]) == [True]
    [info] = ac("cardsInfo", cards=[card_id])
    assert info["flags"] == 3
    # the fields that can break a card need warning_check, as in the add-on
    assert ac(set_value, card=card_id, keys=["flags", "odue"], newValues=[1, 5]) is False
    assert ac(set_value, card=card_id, keys=["flags", "odue"], newValues=[1, 5],
              warning_check=True) == [True]
    [info] = ac("cardsInfo", cards=[card_id])
    assert info["flags"] == 1
    assert ac(set_value, card=[card_id], keys=["flags"], newValues=[2]) is False
    assert ac(set_value, card=card_id, keys="flags", newValues=[2]) is False
    assert ac(set_value, card=card_id, keys=["flags"], newValues=[2, 3]) is False
    assert ac(set_value, card=NO_CARD, keys=["flags"], newValues=[2]) == [
        [False, f"Card was not found: {NO_CARD}"]]
    assert ac("cardsInfo", cards=[card_id])[0]["flags"] == 1


def test_suspended(ac):
    _, card_id = new_card(ac, "suspended")
    assert ac("suspended", card=card_id) is False
    assert ac("suspend", cards=[card_id]) is True
    assert ac("suspended", card=card_id) is True
    [info] = ac("cardsInfo", cards=[card_id])  # a suspended card still has its next reviews
    assert info["queue"] == -1 and len(info["nextReviews"]) == 4
    assert ac.error("suspended", card=NO_CARD) == f"Card was not found: {NO_CARD}"
    assert ac.error("suspended") == "suspended: missing parameter: card"


def test_cards_info_has_flags_and_next_reviews(ac):
    _, card_id = new_card(ac, "next reviews")
    [info, missing] = ac("cardsInfo", cards=[card_id, NO_CARD])
    assert info["flags"] == 0 and missing == {}
    reviews = info["nextReviews"]  # again, hard, good, easy: what the buttons say
    assert len(reviews) == 4 and all(isinstance(text, str) and text for text in reviews)
    # Anki wraps the number in Unicode isolation marks, for the add-on's clients too
    assert reviews[0].replace("\u2068", "").replace("\u2069", "") == "<1m"


def test_review_actions_schedule_the_card(ac):
    _, card_id = new_card(ac, "reviewed")
    assert ac("areDue", cards=[card_id]) == [True]
    assert ac("getIntervals", cards=[card_id]) == [0]

    assert ac("answerCards", answers=[{"cardId": card_id, "ease": 3},
                                      {"cardId": NO_CARD, "ease": 3}]) == [True, False]
    [info] = ac("cardsInfo", cards=[card_id])
    assert info["reps"] == 1 and info["type"] == 1  # learning: its next step is minutes away
    [last] = ac("getIntervals", cards=[card_id])
    assert last < 0  # a learning step, in seconds
    assert ac("getIntervals", cards=[card_id], complete=True) == [[last]]
    assert ac("areDue", cards=[card_id]) == [True]  # within Anki's 20-minute learn-ahead
    assert ac.error("answerCards", answers=[{"cardId": card_id}]) == (
        "answerCards: missing parameter: ease")

    assert ac("setDueDate", cards=[card_id], days="0") is True
    [info] = ac("cardsInfo", cards=[card_id])
    assert info["type"] == 2 and info["queue"] == 2
    assert ac("areDue", cards=[card_id]) == [True]
    assert ac("setDueDate", cards=[card_id], days="10!") is True
    assert ac("areDue", cards=[card_id]) == [False]
    assert ac("getIntervals", cards=[card_id]) == [10]
    assert ac.error("setDueDate", cards=[card_id], days="soon")
    assert ac.error("setDueDate", cards=["x"], days="1") == (
        "cards must be a list of card ids (integers)")

    assert ac("relearnCards", cards=[card_id, NO_CARD]) is None
    [info] = ac("cardsInfo", cards=[card_id])
    assert (info["type"], info["queue"]) == (3, 1)

    assert ac("forgetCards", cards=[card_id]) is None
    [info] = ac("cardsInfo", cards=[card_id])
    assert (info["type"], info["queue"], info["interval"]) == (0, 0, 0)
    assert ac("areDue", cards=[card_id]) == [True]
    assert ac("getIntervals", cards=[card_id]) == [0]
    assert ac.error("getIntervals", cards=[NO_CARD]) == "list index out of range"


def queued_syncs(service):
    with sqlite3.connect(service.data_dir / "ankisync.db") as conn:
        rows = conn.execute("SELECT data FROM task").fetchall()
    return [row for (row,) in rows if json.loads(row)["name"].endswith("sync_now")]


def test_card_changes_reach_the_server_by_the_queued_sync(make_service, account, sync_server,
                                                         tmp_path):
    service = start_with_ankiconnect(make_service)
    ac = Client(service.ac_port)
    service.sync_login(account)
    wait_for_log(service, "synced (")
    _, first = new_card(ac, "first")
    _, second = new_card(ac, "second")
    assert ac("sync")["synced"] is True
    logged = len(service.logs())

    assert ac("setEaseFactors", cards=[first], easeFactors=[3100]) == [True]
    assert ac("setSpecificValueOfCard", card=first, keys=["flags"], newValues=[4]) == [True]
    assert ac("answerCards", answers=[{"cardId": first, "ease": 4}]) == [True]
    assert ac("setDueDate", cards=[second], days="7!") is True
    # no explicit sync: the one the actions queued carries them
    wait_until(lambda: "synced (" in service.logs()[logged:] and not queued_syncs(service),
               lambda: "the queued sync:\n" + service.logs())

    col = download_collection(tmp_path / "phone", sync_server.url, account, "pass")
    try:
        one, two = col.get_card(first), col.get_card(second)
        assert one.flags == 4 and one.reps == 1 and one.type == 2  # easy: straight to review
        assert two.type == 2 and two.ivl == 7
    finally:
        col.close()


def test_a_burst_of_card_changes_queues_one_sync(make_service, account, fake_tts):
    port = free_port()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}")
    wait_for_port(service, port)
    ac = Client(port)
    service.sync_login(account)
    wait_for_log(service, "synced (")
    _, first = new_card(ac, "first")
    _, second = new_card(ac, "second")
    assert ac("sync")["synced"] is True

    fake_tts.hold()  # a card job holds the one Huey worker: queued syncs wait
    task_id = service.post_card()[1]["taskId"]
    fake_tts.wait_held()
    try:
        assert ac("setEaseFactors", cards=[first], easeFactors=[3100]) == [True]
        assert ac("forgetCards", cards=[first]) is None
        assert ac("relearnCards", cards=[second]) is None
        assert ac("setDueDate", cards=[second], days="7!") is True
        assert len(queued_syncs(service)) == 1  # four changes, one sync waiting
    finally:
        fake_tts.release()
        assert service.wait(task_id)[0]["status"] == "success"
