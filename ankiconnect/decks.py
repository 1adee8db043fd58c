"""Deck actions."""

from ankiconnect.dispatch import ActionError, collection_action


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
