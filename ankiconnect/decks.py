"""Deck actions."""

from ankiconnect import deletions
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


@action
def deleteDecks(context, decks, cardsToo=False):
    if not cardsToo:
        # Anki cannot delete a deck and keep its cards; the add-on refuses rather than lose them
        raise ActionError("Since Anki 2.1.28 it's not possible "
                          "to delete decks without deleting cards as well")
    with context.worker.lock:
        col = context.collection()
        ids = [did for did in (col.decks.id_for_name(name) for name in decks
                               if isinstance(name, str)) if did is not None]
        # the decks' notes (subdecks' too) go with them: remembered like deleteNotes's
        every = sorted({child for did in ids for child in col.decks.deck_and_child_ids(did)})
        if every:
            marks = ", ".join("?" * len(every))
            deletions.remove_notes(context, col, col.db.list(
                f"select distinct nid from cards where did in ({marks}) or odid in ({marks})",
                *every, *every))
        col.decks.remove(ids)
    context.sync_soon()


def _config_ids(col):
    return [conf["id"] for conf in col.decks.all_config()]


@collection_action
def getDeckConfig(col, deck):
    did = col.decks.id_for_name(deck) if isinstance(deck, str) else None
    if did is None:
        return False
    return col.decks.config_dict_for_deck_id(did)


@action
def saveDeckConfig(context, config):
    with context.worker.lock:
        col = context.collection()
        config["id"] = str(config["id"])
        if int(config["id"]) not in _config_ids(col):
            return False
        config["id"] = int(config["id"])
        try:
            col.decks.update_config(config)
        except Exception:  # the add-on answers False for a config Anki will not take
            return False
    context.sync_soon()
    return True


@action
def setDeckConfigId(context, decks, configId):
    configId = int(configId)
    with context.worker.lock:
        col = context.collection()
        found = [col.decks.by_name(name) if isinstance(name, str) else None for name in decks]
        if None in found:
            return False
        try:
            for deck in found:
                col.decks.set_config_id_for_deck_dict(deck, configId)
        except Exception:  # as the add-on: False, though earlier decks may have changed
            return False
    context.sync_soon()
    return True


@action
def cloneDeckConfigId(context, name, cloneFrom="1"):
    config_id = int(cloneFrom)
    with context.worker.lock:
        col = context.collection()
        if config_id not in _config_ids(col):
            return False
        new_id = col.decks.add_config_returning_id(name, col.decks.get_config(config_id))
    context.sync_soon()
    return new_id


@collection_action
def removeDeckConfigId(col, configId):
    # Removing a preset is a schema change: the next sync would be a full one, and
    # ours takes the server's collection, undoing the removal and every change made
    # since the last sync. Refused until a full upload can be chosen safely.
    if int(configId) not in _config_ids(col):
        return False
    raise ActionError("removeDeckConfigId is not served: removing a deck options preset"
                      " forces a full sync, which would undo it and lose changes made since"
                      " the last sync; remove it in Anki desktop, then sync")


def _nodes(node):
    """Every node of a deck tree by deck id."""
    found = {node.deck_id: node}
    for child in node.children:
        found.update(_nodes(child))
    return found


@collection_action
def getDeckStats(col, decks):
    # unlike the add-on, a name with no deck is left out rather than created
    wanted = {col.decks.id_for_name(name) for name in decks if isinstance(name, str)}
    return {deck_id: {"deck_id": node.deck_id, "name": node.name,
                      "new_count": node.new_count, "learn_count": node.learn_count,
                      "review_count": node.review_count, "total_in_deck": node.total_in_deck}
            for deck_id, node in _nodes(col.sched.deck_due_tree()).items() if deck_id in wanted}


@collection_action
def deckNameFromId(col, deckId):
    found = col.decks.get(deckId, default=False) if type(deckId) is int else None
    if not found:
        raise ActionError(f"deck was not found: {deckId}")
    return found["name"]
