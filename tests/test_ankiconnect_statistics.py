"""AnkiConnect's statistic actions, through the worker's port, against a real collection."""

import datetime
import time

from anki_server import download_collection
from helpers import wait_for_log
from test_ankiconnect import Client, ac, basic, keyed, start_with_ankiconnect  # noqa: F401 (fixtures)


def cards_in(ac, deck, *fronts):
    ac("createDeck", deck=deck)
    notes = [ac("addNote", note=basic(front, deck=deck)) for front in fronts]
    return [ac("notesInfo", notes=[note])[0]["cards"][0] for note in notes]


def test_reviews_inserted_are_read_back(ac):
    first, second = cards_in(ac, "Reviewed", "reviewed one", "reviewed two")
    assert ac("cardReviews", deck="Reviewed", startID=0) == []
    assert ac("getLatestReviewID", deck="Reviewed") == 0
    assert ac("insertReviews", reviews=[[456, first, -1, 3, 4, -60, 2500, 6157, 0],
                                        [789, second, -1, 1, -60, -60, 0, 4846, 0]]) is None

    assert ac("cardReviews", deck="Reviewed", startID=0) == [
        [456, first, -1, 3, 4, -60, 2500, 6157, 0], [789, second, -1, 1, -60, -60, 0, 4846, 0]]
    assert ac("cardReviews", deck="Reviewed", startID=456) == [
        [789, second, -1, 1, -60, -60, 0, 4846, 0]]
    assert ac("getLatestReviewID", deck="Reviewed") == 789
    assert ac("getReviewsOfCards", cards=[first, 1]) == {
        str(first): [{"id": 456, "usn": -1, "ease": 3, "ivl": 4, "lastIvl": -60,
                      "factor": 2500, "time": 6157, "type": 0}],
        "1": []}
    assert ac("insertReviews", reviews=[]) is None


def test_unknown_deck_has_no_reviews_and_is_not_made(ac):
    assert ac("cardReviews", deck="Never made", startID=0) == []
    assert ac("getLatestReviewID", deck="Never made") == 0
    assert "Never made" not in ac("deckNames")


def test_insert_reviews_refuses_what_is_not_a_review(ac):
    [card] = cards_in(ac, "Refused", "refused review")
    shape = "each review must be a list of 9 integers: id, cid, usn, ease, ivl, lastIvl, factor, time, type"
    for bad in ([1, card, -1], [1, card, -1, 3, 4, -60, 2500, 6157, "0); drop table notes; --"],
                [1.5, card, -1, 3, 4, -60, 2500, 6157, 0], "1,2,3", {"id": 1}):
        error = ac.error("insertReviews", reviews=[bad] if not isinstance(bad, str) else bad)
        assert error.startswith(shape.split(":")[0]) or error == "reviews must be a list of reviews"
    assert ac.error("insertReviews", reviews=[[1, card, -1, 3, 4, -60, 2500, 6157, 0], "x"]
                    ).startswith(shape)
    assert ac("cardReviews", deck="Refused", startID=0) == []  # none of a bad batch went in
    ac("insertReviews", reviews=[[1000, card, -1, 3, 4, -60, 2500, 6157, 0]])
    # the same review id twice: Anki's database refuses it, and says so
    assert "UNIQUE" in ac.error("insertReviews", reviews=[[1000, card, -1, 3, 4, -60, 2500, 1, 0]])
    assert ac("getReviewsOfCards", cards=[card])[str(card)][0]["time"] == 6157
    assert ac.error("insertReviews") == "insertReviews: missing parameter: reviews"
    assert ac.error("cardReviews", deck="Refused") == "cardReviews: missing parameter: startID"
    assert ac.error("getLatestReviewID") == "getLatestReviewID: missing parameter: deck"
    assert ac.error("getReviewsOfCards") == "getReviewsOfCards: missing parameter: cards"


def test_reviewed_today_and_by_day(ac):
    before = ac("getNumCardsReviewedToday")
    by_day = dict(ac("getNumCardsReviewedByDay"))
    [card] = cards_in(ac, "Today", "reviewed today")
    assert ac("answerCards", answers=[{"cardId": card, "ease": 3}]) == [True]
    now = int(time.time() * 1000)
    # a review from long ago counts on its own day, not today
    ac("insertReviews", reviews=[[now + 1, card, -1, 3, 1, 0, 2500, 3000, 1],
                                 [86_400_000 * 3 + 43_200_000, card, -1, 3, 1, 0, 2500, 3000, 1]])
    assert ac("getNumCardsReviewedToday") == before + 2

    days = ac("getNumCardsReviewedByDay")
    assert all(isinstance(day, str) and isinstance(count, int) for day, count in days)
    assert [day for day, _ in days] == sorted((day for day, _ in days), reverse=True)
    counts = dict(days)
    assert counts["1970-01-04"] == by_day.get("1970-01-04", 0) + 1
    assert sum(counts.values()) == sum(by_day.values()) + 3
    today = datetime.date.today().isoformat()
    yesterday = (datetime.date.today() - datetime.timedelta(days=1)).isoformat()
    assert days[0][0] in (today, yesterday)  # before the day's start hour Anki's day is yesterday


def test_collection_stats_html(ac):
    cards_in(ac, "Stats page", "stats page")
    whole = ac("getCollectionStatsHTML")
    assert isinstance(whole, str) and "<" in whole and "Today" in whole
    deck_only = ac("getCollectionStatsHTML", wholeCollection=False)
    assert isinstance(deck_only, str) and "Today" in deck_only


def test_inserted_reviews_reach_the_server(make_service, account, sync_server, tmp_path):
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    wait_for_log(service, "synced (")  # the login's own first sync, as in the card tests
    ac = Client(service.ac_port)
    [card] = cards_in(ac, "Synced reviews", "synced review")
    assert ac("sync")["synced"] is True
    review_id = int(time.time() * 1000)
    ac("insertReviews", reviews=[[review_id, card, -1, 3, 4, -60, 2500, 6157, 0]])
    # the review goes up with this sync, or with the one insertReviews queued if the
    # nudged worker started that first: this one waits for it
    assert ac("sync")["outcome"] in ("normal", "no_changes")

    col = download_collection(tmp_path / "fresh", sync_server.url, account, "pass")
    try:
        assert col.db.all("select id, cid, ease, ivl, time from revlog") == [
            [review_id, card, 3, 4, 6157]]
    finally:
        col.close()
