"""Statistic actions: review counts, the review log, and Anki's statistics page."""

import time

from ankiconnect.dispatch import ActionError, action, collection_action

# the revlog columns as the add-on answers them, in its order
_REVIEW = ("id", "cid", "usn", "ease", "ivl", "lastIvl", "factor", "time", "type")
_BATCH = 999  # SQLite's default limit of bound variables


def _deck_id(col, name):
    """The deck's id, or None. The add-on makes the deck when it is missing; a read
    here changes nothing (and an empty deck has no reviews either way)."""
    return col.decks.id_for_name(name) if isinstance(name, str) else None


@collection_action
def getNumCardsReviewedToday(col):
    return col.db.scalar("select count() from revlog where id > ?",
                         (col.sched.day_cutoff - 86400) * 1000)


@collection_action
def getNumCardsReviewedByDay(col):
    # a day starts at the collection's "next day starts at" hour, as in Anki
    shift = int(time.strftime("%H", time.localtime(col.sched.day_cutoff))) * 3600
    return col.db.all("select date(id/1000 - ?, 'unixepoch', 'localtime') as day, count()"
                      " from revlog group by day order by day desc", shift)


@collection_action
def getCollectionStatsHTML(col, wholeCollection=True):
    stats = col.stats()
    stats.wholeCollection = bool(wholeCollection)
    return stats.report()


@collection_action
def cardReviews(col, deck, startID):
    deck_id = _deck_id(col, deck)
    if deck_id is None:
        return []
    return col.db.all(f"select {', '.join(_REVIEW)} from revlog"
                      " where id > ? and cid in (select id from cards where did = ?)",
                      startID, deck_id)


@collection_action
def getReviewsOfCards(col, cards):
    if not isinstance(cards, list):
        raise ActionError("cards must be a list of card ids")
    reviews = {}
    for start in range(0, len(cards), _BATCH):
        batch = cards[start:start + _BATCH]
        rows = col.db.all(f"select {', '.join(_REVIEW)} from revlog"
                          f" where cid in ({', '.join('?' * len(batch))})", *batch)
        for row in rows:
            review = dict(zip(_REVIEW, row))
            reviews.setdefault(review.pop("cid"), []).append(review)
    return {card: reviews.get(card, []) for card in cards}


@collection_action
def getLatestReviewID(col, deck):
    deck_id = _deck_id(col, deck)
    if deck_id is None:
        return 0
    return col.db.scalar("select max(id) from revlog"
                         " where cid in (select id from cards where did = ?)", deck_id) or 0


def _review_rows(reviews):
    """Each review as 9 integers, checked: the add-on pastes them into its SQL as text."""
    if not isinstance(reviews, list):
        raise ActionError("reviews must be a list of reviews")
    rows = []
    for review in reviews:
        if (not isinstance(review, list) or len(review) != len(_REVIEW)
                or not all(type(value) is int for value in review)):
            raise ActionError(f"each review must be a list of {len(_REVIEW)} integers:"
                              f" {', '.join(_REVIEW)}; got {review!r:.200}")
        rows.append(review)
    return rows


@action
def insertReviews(context, reviews):
    rows = _review_rows(reviews)
    if not rows:
        return
    with context.worker.lock:
        col = context.collection()
        col.db.executemany(f"insert into revlog({', '.join(_REVIEW)})"
                           f" values ({', '.join('?' * len(_REVIEW))})", rows)
        # bare SQL leaves the collection's modification time alone, and a sync
        # that sees no change sends nothing: mark the collection changed
        col.db.execute("update col set mod = ?", int(time.time() * 1000))
    context.sync_soon()
