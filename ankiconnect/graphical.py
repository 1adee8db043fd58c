"""Graphical actions: there is no window on a headless server.

Each one answers what is true without a window: the browser's search still finds
cards, the database check still runs, and the browser and reviewer are never open,
so the actions that ask about them get the add-on's own answer for that case. An
action that would only show something says so with an error, and apiReflect leaves
it out (NO_WINDOW); none pretends to have shown what it did not.
"""

from ankiconnect.cards import findCards
import logging

from ankiconnect.dispatch import ActionError, action

log = logging.getLogger(__name__)

# answered with _no_window's error only, whatever their params; apiReflect does not offer them
NO_WINDOW = frozenset({
    "guiEditNote", "guiAddCards", "guiAddNoteSetData", "guiDeckOverview", "guiDeckBrowser",
    "guiDeckReview", "guiImportFile", "guiUndo", "guiExitAnki", "guiPlayAudio",
})


def _no_window(name, instead):
    raise ActionError(f"{name}: ankisync runs without Anki's window, so there is nothing"
                      f" to show; {instead}")


@action
def guiBrowse(context, query=None, reorderCards=None):
    # no browser window to open: the cards it would show. The add-on checks
    # reorderCards like this, then answers the same ids whatever the order.
    if reorderCards is not None:
        if not isinstance(reorderCards, dict):
            raise ActionError(f"reorderCards should be a dict: {reorderCards}")
        if not ("columnId" in reorderCards and "order" in reorderCards):
            raise ActionError('Must provide a "columnId" and a "order" property"')
        if reorderCards["order"] not in ("ascending", "descending"):
            raise ActionError(f"invalid card order: {reorderCards['order']}")
    return findCards(context, query=query)


@action
def guiSelectedNotes(context):
    return []  # the add-on's answer when no browser is open


@action
def guiSelectCard(context, card):
    return False  # the add-on's answer when no browser is open


@action
def guiSelectNote(context, note):
    return False  # the add-on's old name for guiSelectCard


@action
def guiReviewActive(context):
    return False  # nothing is ever being reviewed here


@action
def guiCurrentCard(context):
    raise ActionError("Gui review is not currently active.")


@action
def guiStartCardTimer(context):
    return False  # the add-on's answer when no review is active


@action
def guiShowQuestion(context):
    return False


@action
def guiShowAnswer(context):
    return False


@action
def guiAnswerCard(context, ease):
    return False  # use answerCards to answer a card without a window


@action
def guiCheckDatabase(context):
    """Anki's Check Database, which needs no window; True as in the add-on."""
    with context.worker.lock:
        problems, _ = context.collection().fix_integrity()
    log.info("AnkiConnect: database check: %s", problems.replace("\n", "; "))
    context.sync_soon()  # what the check fixed goes up like any change
    return True


@action
def guiEditNote(context, **_):
    _no_window("guiEditNote", "read the note with notesInfo and change it with updateNote")


@action
def guiAddCards(context, **_):
    _no_window("guiAddCards", "add the note with addNote")


@action
def guiAddNoteSetData(context, **_):
    _no_window("guiAddNoteSetData", "add the note with addNote")


@action
def guiDeckOverview(context, **_):
    _no_window("guiDeckOverview", "getDeckStats gives a deck's counts")


@action
def guiDeckBrowser(context, **_):
    _no_window("guiDeckBrowser", "deckNames lists the decks")


@action
def guiDeckReview(context, **_):
    _no_window("guiDeckReview", "review in Anki on another device, or use answerCards")


@action
def guiImportFile(context, **_):
    _no_window("guiImportFile", "importPackage imports an .apkg from the packages folder")


@action
def guiUndo(context, **_):
    _no_window("guiUndo", "there is no window whose last step could be undone")


@action
def guiPlayAudio(context, **_):
    _no_window("guiPlayAudio", "nothing is being reviewed here, and no sound is played")


@action
def guiExitAnki(context, **_):
    _no_window("guiExitAnki", "a client may not stop ankisync: stop it where it was"
               " started (systemctl stop ankisync, or Ctrl-C in ./run.sh)")
