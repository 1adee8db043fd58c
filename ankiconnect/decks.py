"""Deck actions."""

from ankiconnect.dispatch import ActionError, action, collection_action


def deck(col, name):
    """The deck of that name, or the add-on's refusal."""
    deck = col.decks.by_name(name) if isinstance(name, str) else None
    if deck is None:
        raise ActionError(f"deck was not found: {name}")
    return deck


@collection_action
def deckNames(col):
    return [deck.name for deck in col.decks.all_names_and_ids()]


@collection_action
def deckNamesAndIds(col):
    return {deck.name: deck.id for deck in col.decks.all_names_and_ids()}


@collection_action
def createDeck(col, deck):
    return col.decks.id(deck)


@collection_action
def getDecks(col, cards):
    decks = {}
    for card_id in cards:
        did = col.db.scalar("select did from cards where id=?", card_id)
        # an unknown card counts as in the default deck, as in the add-on
        decks.setdefault(col.decks.get(did)["name"], []).append(card_id)
    return decks


@action
def changeDeck(context, cards, deck):
    with context.worker.lock:
        col = context.collection()
        did = col.decks.id(deck)
        col.sched.remFromDyn(cards)  # out of a filtered deck first, as the add-on does
        col.set_deck(cards, did)
    context.sync_soon()
