"""Card actions."""

from anki.errors import BackendError

from ankiconnect.dispatch import action, collection_action
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
            "left": card.left, "mod": card.mod})
    return result


@collection_action
def suspend(col, cards, suspend=True):
    # only the cards not already in the wanted state; False when there are none
    cards = [card_id for card_id in cards if (col.get_card(card_id).queue == -1) != suspend]
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
