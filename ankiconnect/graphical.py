"""Graphical actions: there is no window on a headless server; what can be answered is."""

from ankiconnect.cards import findCards
from ankiconnect.dispatch import ActionError, action


@action
def guiBrowse(context, query=None, **_):
    # no browser window to open: the cards it would show
    return findCards(context, query=query)


@action
def guiEditNote(context, note=None):
    raise ActionError("unsupported action")
