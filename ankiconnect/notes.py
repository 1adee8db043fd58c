"""Note actions, the add-on's rules for a new note, and re-adding after a full download.

A note added here is recorded as a finished job of kind "ankiconnect" (its
guid derives from the job id), so the next sync marks it synced and a full
download re-adds it (`readd`, which the Worker is given at start). Each add
queues one sync, coalesced.
"""

import json
import logging

from anki.collection import StripHtmlMode
from anki.errors import BackendError
from anki.notes import Note, NoteFieldsCheckResult
from anki.utils import checksum

import config
import duplicates
import jobs
from ankiconnect import deletions
from ankiconnect.decks import deck as _deck
from ankiconnect.dispatch import ActionError, action, collection_action
from ankiconnect.media import attach_media, fetch_media
from ankiconnect.models import fields_info
from ankiconnect.models import model as _model
from errors import BadNote
from notes import ensure_deck, note_guid

log = logging.getLogger(__name__)


def _get_note(col, note_id):
    try:
        return col.get_note(note_id)
    except (BackendError, TypeError, ValueError):
        raise ActionError(f"Note was not found: {note_id}") from None


def _tags(value):
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ActionError("Must provide tags as a list of strings")
    return value


def _options(note):
    """The duplicate options of a note request, checked like the add-on does."""
    options = note.get("options") or {}
    scope = options.get("duplicateScopeOptions") or {}
    checked = {"allowDuplicate": options.get("allowDuplicate", False),
               "duplicateScopeOptions.checkChildren": scope.get("checkChildren", False),
               "duplicateScopeOptions.checkAllModels": scope.get("checkAllModels", False)}
    for name, value in checked.items():
        if type(value) is not bool:
            raise ActionError(f'option parameter "{name}" must be boolean')
    return {"allow": checked["allowDuplicate"], "scope": options.get("duplicateScope"),
            "deck": scope.get("deckName"),
            "children": checked["duplicateScopeOptions.checkChildren"],
            "all_models": checked["duplicateScopeOptions.checkAllModels"]}


def _new_note(col, request):
    """An unsaved note from a request's modelName, deckName, fields and tags."""
    if not isinstance(request, dict):
        raise ActionError("note must be an object with deckName, modelName and fields")
    model = _model(col, request.get("modelName"))
    deck = _deck(col, request.get("deckName"))
    note = Note(col, model)
    note.tags = _tags(request.get("tags"))
    names = {name.lower(): name for name in note.keys()}
    fields = request.get("fields") or {}
    if not isinstance(fields, dict):
        raise ActionError("fields must be an object of field name to text")
    for name, value in fields.items():
        # field names match case-insensitively; unknown ones are ignored, as in the add-on
        if name.lower() in names:
            note[names[name.lower()]] = str(value)
    return note, deck


_CLOZE_PROBLEMS = {
    NoteFieldsCheckResult.MISSING_CLOZE:
        "cannot create note because it has no cloze deletion such as {{c1::word}}",
    NoteFieldsCheckResult.NOTETYPE_NOT_CLOZE:
        "cannot create note because cloze deletions need a cloze note type",
    NoteFieldsCheckResult.FIELD_NOT_CLOZE:
        "cannot create note because only the cloze field may hold cloze deletions",
}


def _field_checksum(col, text):
    # anki.utils.field_checksum needs the desktop app's global backend; this
    # is the same sum made with the collection's own
    stripped = col._backend.strip_html(text=text, mode=StripHtmlMode.PRESERVE_MEDIA_FILENAMES)
    return int(checksum(stripped)[:8], 16)


def _is_duplicate_in_scope(col, note, deck, options):
    """The add-on's duplicate rule for the "deck" scope or across all note types."""
    query, args = "select id from notes where csum=?", [_field_checksum(col, note.fields[0])]
    if not options["all_models"]:
        query, args = query + " and mid=?", args + [note.mid]
    deck_ids = None
    if options["scope"] == "deck":
        if options["deck"] is not None:
            other = col.decks.by_name(options["deck"])
            if other is None:
                return False  # no such deck: nothing can be a duplicate in it
            deck = other
        deck_ids = {deck["id"]}
        if options["children"]:
            deck_ids.update(child_id for _, child_id in col.decks.children(deck["id"]))
    for note_id in col.db.list(query, *args):
        if deck_ids is None:
            return True
        if deck_ids.intersection(col.db.list("select did from cards where nid=?", note_id)):
            return True
    return False


def _check(col, note, deck, options):
    """Raise the add-on's refusal when the note is empty, a duplicate or a bad cloze."""
    state = note.fields_check()
    if state in _CLOZE_PROBLEMS:
        raise ActionError(_CLOZE_PROBLEMS[state])
    if options["scope"] != "deck" and not options["all_models"]:
        empty, duplicate = (state == NoteFieldsCheckResult.EMPTY,
                            state == NoteFieldsCheckResult.DUPLICATE)
    else:
        empty = not note.fields[0].strip()
        duplicate = not empty and _is_duplicate_in_scope(col, note, deck, options)
    if empty:
        raise ActionError("cannot create note because it is empty")
    if duplicate and not options["allow"]:
        raise ActionError("cannot create note because it is a duplicate")


def _checked_note(col, request):
    """A note ready to add (media not yet attached), or ActionError."""
    note, deck = _new_note(col, request)
    _check(col, note, deck, _options(request))
    return note, deck


def _add(context, col, request, media):
    """Add one requested note (media already fetched); its id."""
    job_id = jobs.new_id()
    note, deck = _new_note(col, request)
    options = _options(request)
    _check(col, note, deck, options)
    stored = attach_media(col, note, media)
    note.guid = note_guid(job_id)
    try:
        col.add_note(note, deck["id"])
    except BackendError as error:
        raise ActionError(str(error)) from None
    record = {"modelName": request["modelName"], "deckName": request["deckName"],
              "fields": dict(note.items()), "tags": list(note.tags), "media": stored}
    result = {"noteId": note.id, "cardIds": list(note.card_ids()), "deck": request["deckName"]}
    jobs.create_done(config.db_path(context.settings), "ankiconnect", record, result, job_id=job_id)
    log.info("AnkiConnect: added note %s (job %s)", note.id, job_id)
    return note.id


def readd(col, job):
    """Add an AnkiConnect job's note again, same guid, after a full download; or,
    for a deletion's record, delete its notes again."""
    request = json.loads(job["request"])
    if job["kind"] == deletions.KIND or "deleteGuids" in request:  # (older records: "ankiconnect")
        log.info("AnkiConnect: deleted %s notes again after a full download",
                 deletions.redelete(col, job))
        return
    model = col.models.by_name(request["modelName"])
    if model is None:
        raise BadNote(f"the note type {request['modelName']!r} is not in the collection"
                             " the sync server sent; add it in Anki and sync")
    note = Note(col, model)
    note.guid = note_guid(job["id"])
    note.tags = request.get("tags") or []
    for name, value in request["fields"].items():
        if name in note:
            note[name] = value
    if note.fields_check() == NoteFieldsCheckResult.EMPTY:
        raise BadNote(f"the note type {request['modelName']!r} on the sync server lacks"
                             " the fields this note filled")
    col.add_note(note, ensure_deck(col, request["deckName"]))


@collection_action
def findNotes(col, query=None):
    return [] if query is None else list(col.find_notes(query))


@action
def notesInfo(context, notes=None, query=None):
    if notes is None and query is None:
        raise ActionError('Must provide either "notes" or a "query"')
    with context.worker.lock:
        col = context.collection()
        if query is not None:  # as in the add-on, a query wins over notes
            notes = col.find_notes(query)
        result = []
        for note_id in notes:
            try:
                note = col.get_note(note_id)
            except (BackendError, TypeError, ValueError):
                result.append({})  # keeps the answer in step with the question
                continue
            result.append({"noteId": note.id, "profile": context.settings.ankiconnect_profile,
                           "tags": list(note.tags), "fields": fields_info(note),
                           "modelName": note.note_type()["name"], "mod": note.mod,
                           "cards": list(col.card_ids_of_note(note.id))})
    return result


@collection_action
def notesModTime(col, notes):
    result = []
    for note_id in notes:
        try:
            note = col.get_note(note_id)
        except (BackendError, TypeError, ValueError):
            result.append({})
            continue
        result.append({"noteId": note.id, "mod": note.mod})
    return result


@collection_action
def canAddNotes(col, notes):
    return [_can_add(col, note) is None for note in notes]


@collection_action
def canAddNotesWithErrorDetail(col, notes):
    answers = []
    for note in notes:
        error = _can_add(col, note)
        answers.append({"canAdd": True} if error is None else {"canAdd": False, "error": error})
    return answers


@collection_action
def canAddNote(col, note):
    return _can_add(col, note) is None


@collection_action
def canAddNoteWithErrorDetail(col, note):
    error = _can_add(col, note)
    return {"canAdd": True} if error is None else {"canAdd": False, "error": error}


def _can_add(col, request):
    """None if the note could be added, else why not. Media is not fetched for a check."""
    try:
        _checked_note(col, request)
    except ActionError as error:
        return str(error)
    return None


@action
def addNote(context, note):
    media = fetch_media(context.settings, note)
    with context.worker.lock:
        col = context.collection()
        note_id = _add(context, col, note, media)
        indexed = duplicates.holds(col, [note_id])
    context.sync_soon(index=indexed)
    return note_id


@action
def addNotes(context, notes):
    """All the notes or none, as the current add-on: one refused note fails the batch,
    and the error lists every refusal ("['model was not found: X', ...]").

    Each note is checked first, against the collection and the notes before it in the
    batch (two equal notes in one batch are duplicates as when added one by one);
    only when all pass are they added, so a refusal leaves nothing half-written.
    """
    if not isinstance(notes, list):
        raise ActionError("notes must be a list of notes")
    media = [fetch_media(context.settings, request) for request in notes]
    with context.worker.lock:
        col = context.collection()
        errors, earlier = [], []
        for request in notes:
            try:
                note, deck = _checked_note(col, request)
                options = _options(request)
                if not options["allow"] and any(
                        _same_in_scope(col, note, deck, options, *other) for other in earlier):
                    raise ActionError("cannot create note because it is a duplicate")
                earlier.append((note, deck))
            except (ActionError, KeyError, TypeError) as error:
                errors.append(str(error))
        if errors:
            log.info("AnkiConnect: addNotes: %d of %d notes refused, none added: %s",
                     len(errors), len(notes), errors)
            raise ActionError(str(errors))
        ids = []
        try:
            for request, items in zip(notes, media):
                ids.append(_add(context, col, request, items))
        except ActionError:
            if ids:  # the backend refused a checked note: take back this batch's notes
                guids = {col.db.scalar("select guid from notes where id=?", i) for i in ids}
                col.remove_notes(ids)
                path = config.db_path(context.settings)
                jobs.mark_deleted(path, [job["id"] for job in jobs.added(path)
                                         if note_guid(job["id"]) in guids])
            raise
        indexed = duplicates.holds(col, ids)
    if ids:
        context.sync_soon(index=indexed)
    return ids


def _same_in_scope(col, note, deck, options, other, other_deck):
    """Whether an earlier note of the same batch makes note a duplicate, by the
    rule _check applies against the collection."""
    if note.fields[0].strip() == "" or (
            _field_checksum(col, note.fields[0]) != _field_checksum(col, other.fields[0])):
        return False
    if note.mid != other.mid and not options["all_models"]:
        return False
    if options["scope"] != "deck":
        return True
    scope_deck = deck
    if options["deck"] is not None:
        scope_deck = col.decks.by_name(options["deck"])
        if scope_deck is None:
            return False
    deck_ids = {scope_deck["id"]}
    if options["children"]:
        deck_ids.update(child_id for _, child_id in col.decks.children(scope_deck["id"]))
    return other_deck["id"] in deck_ids


@action
def updateNoteFields(context, note):
    media = fetch_media(context.settings, note)
    with context.worker.lock:
        col = context.collection()
        anki_note = _get_note(col, note["id"])
        for name, value in (note.get("fields") or {}).items():
            if name in anki_note:
                anki_note[name] = str(value)
        attach_media(col, anki_note, media)
        col.update_note(anki_note)
        indexed = duplicates.holds(col, [anki_note.id])
    context.sync_soon(index=indexed)


@action
def updateNote(context, note):
    if "fields" not in note and "tags" not in note:
        raise ActionError('Must provide a "fields" or "tags" property.')
    if "fields" in note:
        updateNoteFields(context, note=note)
    if "tags" in note:
        updateNoteTags(context, note=note["id"], tags=note["tags"])


@action
def updateNoteTags(context, note, tags):
    tags = _tags(tags)
    with context.worker.lock:
        col = context.collection()
        anki_note = _get_note(col, note)
        anki_note.tags = tags
        col.update_note(anki_note)
    context.sync_soon(index=False)  # the duplicate index holds no tags


@collection_action
def getNoteTags(col, note):
    return list(_get_note(col, note).tags)


@collection_action
def getTags(col):
    return col.tags.all()


@action
def addTags(context, notes, tags, add=True):
    with context.worker.lock:
        col = context.collection()
        if add:
            col.tags.bulk_add(notes, tags)
        else:
            col.tags.bulk_remove(notes, tags)
    context.sync_soon(index=False)  # the duplicate index holds no tags


@action
def removeTags(context, notes, tags):
    return addTags(context, notes=notes, tags=tags, add=False)


@action
def deleteNotes(context, notes):
    """Delete the notes; the jobs that added any of them no longer re-add it after a full download."""
    with context.worker.lock:
        deletions.remove_notes(context, context.collection(), notes)
    context.sync_soon()


def _is_empty(fields):
    return not any(field.strip() for field in fields.split("\x1f"))


@action
def removeEmptyNotes(context):
    """Delete the notes whose fields are all empty, as the add-on's README says.

    (The add-on's code removes the note types that have no notes instead; that is a
    schema change forcing a full sync, and not what its users are told.)"""
    with context.worker.lock:
        col = context.collection()
        empty = [note_id for note_id, fields in col.db.execute("select id, flds from notes")
                 if _is_empty(fields)]
        if empty:
            deletions.remove_notes(context, col, empty)
    if empty:
        log.info("AnkiConnect: removed %s empty notes", len(empty))
        context.sync_soon()


def _replace_tag(col, note_ids, old, new):
    changed = []
    for note_id in note_ids:
        try:
            note = col.get_note(note_id)
        except (BackendError, TypeError, ValueError):
            continue  # an unknown note is skipped, as in the add-on
        if note.has_tag(old):
            note.remove_tag(old)
            note.add_tag(new)
            changed.append(note)
    if changed:
        col.update_notes(changed)
    return bool(changed)


def _tag_name(name, value):
    if not isinstance(value, str):
        raise ActionError(f"{name} must be a tag name (a string)")
    return value


@action
def replaceTags(context, notes, tag_to_replace, replace_with_tag):
    old = _tag_name("tag_to_replace", tag_to_replace)
    new = _tag_name("replace_with_tag", replace_with_tag)
    with context.worker.lock:
        changed = _replace_tag(context.collection(), notes, old, new)
    if changed:
        context.sync_soon(index=False)


@action
def replaceTagsInAllNotes(context, tag_to_replace, replace_with_tag):
    old = _tag_name("tag_to_replace", tag_to_replace)
    new = _tag_name("replace_with_tag", replace_with_tag)
    with context.worker.lock:
        col = context.collection()
        changed = _replace_tag(col, col.db.list("select id from notes"), old, new)
    if changed:
        context.sync_soon(index=False)


@action
def clearUnusedTags(context):
    with context.worker.lock:
        changes = context.collection().tags.clear_unused_tags()
    if changes.count:
        context.sync_soon(index=False)
