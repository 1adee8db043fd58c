"""Schema changes, and the full upload they force.

Adding, removing or moving a note type's field or card template, or giving a note
another note type, changes what Anki calls the collection's schema: the next sync
cannot merge, one side must be copied whole. Left to itself, ankisync meets a full
sync with a download (the server's copy wins, the job table's notes are added
again), which would undo the edit. So such an edit is made holding the sync lock,
with no other sync in between:

1. a normal sync, so that what other devices sent is here;
2. the change;
3. a sync that meets the server's full sync with a full upload: this collection
   then holds everything, and the other devices take it at their next sync.

A sync before that fails (server unreachable, session refused) refuses the edit,
nothing changed: uploading later could overwrite what a device sends meanwhile. An
upload that fails undoes the edit; if it got as far as closing the collection
(Anki's undo history goes with it), a sync at once says whether the server got it:
if not, it takes the server's copy back, which undoes the edit and keeps every note
(the job table's are added again). With no sync login, the edit is made here only,
as everything before `login` is: the first sync keeps it if the server is empty.
"""

import logging

import config
import db
from ankiconnect.dispatch import ActionError
from errors import AnkisyncError

log = logging.getLogger(__name__)


def _schema_time(col):
    return col.db.scalar("select scm from col")


def change(context, name, plan):
    """Make a change that may alter the schema; the change's result.

    plan(col) checks the request against the collection, changing nothing (or
    raises ActionError), and returns (whether the change alters the schema,
    apply): apply(col) makes it. A plan is made again after the sync before the
    change, which may have brought a new version of what it changes.
    """
    worker = context.worker
    with worker.lock:
        col = context.collection()
        alters, apply = plan(col)
        if not alters:
            result = apply(col)
    if not alters:
        context.sync_soon()
        return result
    with worker.sync_lock:
        try:
            logged_in = worker.sync()
        except AnkisyncError as error:
            raise ActionError(
                f"{name}: not done: it changes the note type's schema, which must go to the"
                f" sync server as a full upload right after a sync, and that sync failed:"
                f" {error}") from None
        with worker.lock:
            col = context.collection()
            alters, apply = plan(col)
            before = _schema_time(col)
            step = col.add_custom_undo_entry(name)  # all it does, undone as one
            result = apply(col)
            col.merge_undo_entries(step)
            undo_point = col.undo_status()
            if not logged_in or _schema_time(col) == before:
                context.sync_soon()  # nothing to upload (or no one to upload to) yet
                return result
            log.info("AnkiConnect: %s changed the schema; uploading the collection", name)
            try:
                worker.sync(full_upload=True)
            except Exception as error:
                _after_failed_upload(context, col, name, error, undo_point)
    return result


def _after_failed_upload(context, col, name, error, undo_point):
    """Undo the change whose full upload failed, or learn whether the server got it; raise
    when the change is not kept."""
    if not isinstance(error, AnkisyncError):
        log.error("AnkiConnect: %s: the full upload failed", name, exc_info=error)
    if col.undo_status() == undo_point:  # it failed before the collection was closed
        col.undo()
        raise ActionError(f"{name}: not done: the full upload it needs failed, so it was"
                          f" undone: {error}") from None
    # Closed for the upload, the collection lost its undo history, and whether the
    # server got it only a sync can say: nothing to do, or the server's copy comes back.
    try:
        context.worker.sync()
    except AnkisyncError as again:
        context.sync_soon()
        raise ActionError(
            f"{name}: not settled: the full upload it needs failed ({error}), and so did the"
            f" sync after it ({again}); the next sync keeps the change if the upload reached"
            f" the server, else takes the server's copy back, which undoes it") from None
    if db.get_state(config.db_path(context.settings), "last_sync_outcome") == "downloaded":
        raise ActionError(f"{name}: not done: the full upload it needs failed ({error}), so"
                          f" the server's copy was taken back, which undid it (the notes"
                          f" added here since are added again)") from None
    log.warning("AnkiConnect: %s: uploaded, then: %s", name, error)  # e.g. the media sync
