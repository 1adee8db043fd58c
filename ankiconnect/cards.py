"""Card actions."""

import functools
import time

from anki.errors import BackendError, NotFoundError
from anki.utils import ids2str

from ankiconnect.dispatch import ActionError, action, collection_action
from ankiconnect.models import fields_info


@collection_action
def findCards(col, query=None):
    return [] if query is None else list(col.find_cards(query))


@collection_action
def cardsInfo(col, cards):
    result = []
    for card_id in cards:
        try:
            card = col.get_card(card_id)
        except (BackendError, TypeError, ValueError):
            result.append({})
            continue
        note, model = card.note(), card.note_type()
        result.append({
            "cardId": card.id, "fields": fields_info(note), "fieldOrder": card.ord,
            "question": card.question(), "answer": card.answer(), "modelName": model["name"],
            "ord": card.ord, "deckName": col.decks.name(card.did), "css": model["css"],
            "factor": card.factor, "interval": card.ivl, "note": card.nid, "type": card.type,
            "queue": card.queue, "due": card.due, "reps": card.reps, "lapses": card.lapses,
            "left": card.left, "mod": card.mod, "nextReviews": _next_reviews(col, card),
            "flags": card.flags})
    return result


def _next_reviews(col, card):
    """What each answer button would say ("<1m", "1d", ...), as the reviewer shows it."""
    states = col._backend.get_scheduling_states(card.id)
    return list(col.sched.describe_next_states(states))


@collection_action
def suspend(col, cards, suspend=True):
    # only the cards not already in the wanted state; False when there are none
    cards = [card_id for card_id in cards if (_card(col, card_id).queue == -1) != suspend]
    if not cards:
        return False
    if suspend:
        col.sched.suspend_cards(cards)
    else:
        col.sched.unsuspend_cards(cards)
    return True


@action
def unsuspend(context, cards):
    suspend(context, cards=cards, suspend=False)


@collection_action
def areSuspended(col, cards):
    answers = []
    for card_id in cards:
        try:
            answers.append(col.get_card(card_id).queue == -1)
        except (BackendError, TypeError, ValueError):
            answers.append(None)
    return answers


def changing_action(func):
    """Register func(col, **params), run holding the collection lock, then queue a
    sync: what it changed goes up like an added note (one queued sync for a burst)."""
    @functools.wraps(func)
    def run(context, **params):
        with context.worker.lock:
            result = func(context.collection(), **params)
        context.sync_soon()
        return result
    return action(run)


def _card(col, card_id):
    """The card, or the add-on's error for an id that names none."""
    try:
        return col.get_card(card_id)
    except (NotFoundError, TypeError, ValueError):
        raise ActionError(f"Card was not found: {card_id}") from None


def _card_or_none(col, card_id):
    try:
        return col.get_card(card_id)
    except (NotFoundError, TypeError, ValueError):
        return None


def _ids(cards):
    """Card ids for a SQL list: integers only, since they are written into the query."""
    if not isinstance(cards, list) or not all(
            isinstance(card_id, int) and not isinstance(card_id, bool) for card_id in cards):
        raise ActionError("cards must be a list of card ids (integers)")
    return cards


@collection_action
def getEaseFactors(col, cards):
    return [None if card is None else card.factor
            for card in (_card_or_none(col, card_id) for card_id in cards)]


@changing_action
def setEaseFactors(col, cards, easeFactors):
    done, changed = [], []
    for i, card_id in enumerate(cards):
        card = _card_or_none(col, card_id)
        if card is None:
            done.append(False)
            continue
        card.factor = easeFactors[i]
        changed.append(card)
        done.append(True)
    col.update_cards(changed)
    return done


# the fields the add-on lets through only with warning_check: they can break a card
_RISKY_KEYS = {"did", "id", "ivl", "lapses", "left", "mod", "nid", "odid", "odue", "ord",
               "queue", "reps", "type", "usn"}


@changing_action
def setSpecificValueOfCard(col, card, keys, newValues, warning_check=False):
    if isinstance(card, list) or not isinstance(keys, list) or not isinstance(newValues, list):
        return False
    if len(newValues) != len(keys):
        return False
    if not warning_check and any(key in _RISKY_KEYS for key in keys):
        return False
    try:
        found = _card(col, card)
        for key, value in zip(keys, newValues):
            setattr(found, key, value)
        col.update_card(found)
    except Exception as error:  # the add-on answers each failure in the result
        return [[False, str(error)]]
    return [True]


@collection_action
def suspended(col, card):
    return _card(col, card).queue == -1


def _last_review(col, card_id):
    """(time in seconds, ivl) of the card's last review log entry, or None."""
    rows = col.db.all("select id/1000.0, ivl from revlog where cid = ? order by id", card_id)
    return rows[-1] if rows else None


@collection_action
def areDue(col, cards):
    due = []
    for card_id in cards:
        if col.find_cards(f"cid:{int(card_id)} is:new"):
            due.append(True)
            continue
        last = _last_review(col, card_id)
        if last is None or last[1] >= -1200:
            due.append(bool(col.find_cards(f"cid:{int(card_id)} is:due")))
        else:  # a learning step under 20 minutes: due when its seconds have passed
            reviewed, ivl = last
            due.append(reviewed - ivl <= time.time())
    return due


@collection_action
def getIntervals(col, cards, complete=False):
    intervals = []
    for card_id in cards:
        if col.find_cards(f"cid:{int(card_id)} is:new"):
            intervals.append(0)
            continue
        logged = col.db.list("select ivl from revlog where cid = ? order by id", card_id)
        if complete:
            intervals.append(logged)
        elif logged:
            intervals.append(logged[-1])
        else:  # a card with no review log (an unknown id): the add-on's IndexError
            raise ActionError("list index out of range")
    return intervals


@collection_action
def cardsModTime(col, cards):
    result = []
    for card_id in cards:
        card = _card_or_none(col, card_id)
        result.append({} if card is None else {"cardId": card.id, "mod": card.mod})
    return result


@collection_action
def cardsToNotes(col, cards):
    return col.db.list("select distinct nid from cards where id in " + ids2str(_ids(cards)))


@changing_action
def forgetCards(col, cards):
    col.sched.schedule_cards_as_new(_ids(cards), restore_position=True, reset_counts=False)


@changing_action
def relearnCards(col, cards):
    # through the cards, not a bare UPDATE as the add-on does: that would keep the
    # old usn, and the change would never go up with the next sync
    changed = [card for card in (_card_or_none(col, card_id) for card_id in _ids(cards))
               if card is not None]
    for card in changed:
        card.type, card.queue = 3, 1
    col.update_cards(changed)


@changing_action
def answerCards(col, answers):
    done = []
    for answer in answers:
        card = _card_or_none(col, answer["cardId"])
        ease = answer["ease"]
        if card is None:
            done.append(False)
            continue
        card.start_timer()
        col.sched.answerCard(card, ease)
        done.append(True)
    return done


@changing_action
def setDueDate(col, cards, days):
    col.sched.set_due_date(_ids(cards), days, config_key=None)
    return True
