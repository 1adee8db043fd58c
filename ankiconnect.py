"""AnkiConnect, headless: the add-on's HTTP JSON API served by the worker.

Yomitan and most card-making tools speak AnkiConnect (`POST /` on port 8765,
`{"action", "version", "params", "key"}`). The worker process owns the
collection, so the endpoint lives there: a small ThreadingHTTPServer on a
daemon thread, each action holding `worker.lock` like the jobs do. Replies,
error strings and CORS follow the add-on (FooSoft/anki-connect), so clients
that match on them keep working.

A note added here is recorded as a finished job of kind "ankiconnect" (its
guid derives from the job id), so the next sync marks it synced and a full
download re-adds it (`readd`). Each add queues one AnkiWeb sync, coalesced.
"""

import base64
import binascii
import fnmatch
import functools
import hashlib
import hmac
import html
import inspect
import json
import logging
import os
import threading
import unicodedata
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anki.collection  # noqa: F401 (first: anki's own modules need this import order)
from anki.errors import BackendError
from anki.notes import Note, NoteFieldsCheckResult
from anki.collection import StripHtmlMode
from anki.utils import checksum

import config
import db
import errors
import jobs
import notes
import worker

log = logging.getLogger(__name__)

API_VERSION = 6
MAX_BODY = 64 * 1024 * 1024       # a request with a few base64 pictures fits
MAX_DOWNLOAD = 32 * 1024 * 1024   # media fetched by url
DOWNLOAD_TIMEOUT = 10             # seconds, as the add-on's webTimeout
MEDIA_KINDS = ("audio", "video", "picture")

_settings = None  # the worker's settings, set by start()
_server = None    # the running server, for stop()


class ActionError(Exception):
    """An expected refusal; its text goes to the client as "error"."""


# --- the collection, one action at a time ------------------------------------

def _collection():
    if _server is None:  # stopping: never reopen a collection the worker closed
        raise ActionError("collection is not available")
    return worker.collection(_settings)


def collection_action(func):
    """Run the action holding the collection lock, with the collection as first argument."""
    @functools.wraps(func)
    def run(**params):
        with worker.lock:
            return func(_collection(), **params)
    return run


# --- notes: build, check, add ------------------------------------------------

def _model(col, name):
    model = col.models.by_name(name) if isinstance(name, str) else None
    if model is None:
        raise ActionError(f"model was not found: {name}")
    return model


def _deck(col, name):
    deck = col.decks.by_name(name) if isinstance(name, str) else None
    if deck is None:
        raise ActionError(f"deck was not found: {name}")
    return deck


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


# --- media -------------------------------------------------------------------

def _download(url):
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ActionError(f"{url} is not an http:// or https:// URL")
    request = urllib.request.Request(url, headers={"User-Agent": "ankisync-ankiconnect"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as answer:
            data = answer.read(MAX_DOWNLOAD + 1)
    except urllib.error.HTTPError as error:
        raise ActionError(f"{url} download failed with return code {error.code}") from None
    except (OSError, ValueError) as error:
        raise ActionError(f"{url} download failed: {error}") from None
    if len(data) > MAX_DOWNLOAD:
        raise ActionError(f"{url} download failed: larger than {MAX_DOWNLOAD // 2**20} MB")
    return data


def _media_bytes(data=None, path=None, url=None):
    """The bytes of a media file given as base64 data, a local path or a URL."""
    if data:
        try:
            return base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError, TypeError) as error:
            raise ActionError(f"media data is not valid base64: {error}") from None
    if path:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise ActionError(f"cannot read {path}: {error.strerror}") from None
    if url:
        return _download(url)
    raise ActionError('You must provide a "data", "path", or "url" field.')


def _store(col, filename, content, skip_hash=None, delete_existing=True):
    """Write a media file; its stored name, or None when skipHash matched."""
    if not isinstance(filename, str) or not filename:
        raise ActionError("filename must be a non-empty string")
    if skip_hash is not None and hashlib.md5(content).hexdigest() == skip_hash:
        return None
    if delete_existing:
        col.media.trash_files([filename])
    # write_data renames when another file already has the name
    return col.media.write_data(filename, content)


def _fetch_media(request):
    """Each media item of a note request with its bytes (or the error getting them).

    Runs before the collection lock is taken: a slow URL must not block reads.
    """
    items = []
    for kind in MEDIA_KINDS:
        value = request.get(kind) if isinstance(request, dict) else None
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                continue
            try:
                content = _media_bytes(item.get("data"), item.get("path"), item.get("url"))
            except ActionError as error:
                content = error
            items.append((kind, item, content))
    return items


def _attach_media(col, note, items):
    """Store the fetched media and reference it in the fields it names.

    As in the add-on, a file that could not be had puts its error into those
    fields instead of failing the note. Returns the stored file names.
    """
    stored = []
    for kind, item, content in items:
        fields = item.get("fields") or []
        if isinstance(fields, str):
            fields = [fields]
        try:
            if isinstance(content, Exception):
                raise content
            name = _store(col, item.get("filename"), content, item.get("skipHash"),
                          item.get("deleteExisting"))
        except ActionError as error:
            log.warning("AnkiConnect: media %r: %s", item.get("filename"), error)
            text = html.escape(str(error), quote=False)
        else:
            if name is None:
                continue
            stored.append(name)
            text = f'<img src="{name}">' if kind == "picture" else f"[sound:{name}]"
        for field in fields:
            if field in note:
                note[field] += text
    return stored


# --- adding, and what follows an add ---------------------------------------

def _add(col, request, media):
    """Add one requested note (media already fetched); its id."""
    job_id = jobs.new_id()
    note, deck = _new_note(col, request)
    options = _options(request)
    _check(col, note, deck, options)
    stored = _attach_media(col, note, media)
    note.guid = notes.note_guid(job_id)
    try:
        col.add_note(note, deck["id"])
    except BackendError as error:
        raise ActionError(str(error)) from None
    record = {"modelName": request["modelName"], "deckName": request["deckName"],
              "fields": dict(note.items()), "tags": list(note.tags), "media": stored}
    result = {"noteId": note.id, "cardIds": list(note.card_ids()), "deck": request["deckName"]}
    jobs.create_done(config.db_path(_settings), "ankiconnect", record, result, job_id=job_id)
    log.info("AnkiConnect: added note %s (job %s)", note.id, job_id)
    return note.id


def _queue_sync():
    """Queue one AnkiWeb sync unless one is already waiting to run.

    A queued sync that has not started yet will carry this note too: it takes
    worker.lock, which the add held. So many adds make one sync, not many.
    """
    import huey_tasks
    try:
        if any(task.name == huey_tasks.sync_now.name for task in huey_tasks.huey.pending()):
            return
        huey_tasks.sync_now()
    except Exception:  # the note is in; the next sync will carry it anyway
        log.exception("AnkiConnect: could not queue a sync")


def readd(col, job):
    """Add an AnkiConnect job's note again, same guid, after a full download."""
    request = json.loads(job["request"])
    model = col.models.by_name(request["modelName"])
    if model is None:
        raise errors.BadNote(f"the note type {request['modelName']!r} is not in the collection"
                             " the sync server sent; add it in Anki and sync")
    note = Note(col, model)
    note.guid = notes.note_guid(job["id"])
    note.tags = request.get("tags") or []
    for name, value in request["fields"].items():
        if name in note:
            note[name] = value
    if note.fields_check() == NoteFieldsCheckResult.EMPTY:
        raise errors.BadNote(f"the note type {request['modelName']!r} on the sync server lacks"
                             " the fields this note filled")
    col.add_note(note, notes.ensure_deck(col, request["deckName"]))


# --- the actions --------------------------------------------------------------

def version():
    return API_VERSION


def requestPermission(origin="", allowed=False):
    # no one to ask on a headless server: the origin allowlist decides
    if not allowed:
        return {"permission": "denied"}
    return {"permission": "granted", "requireApikey": bool(_settings.ankiconnect_key),
            "version": API_VERSION}


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
def modelNames(col):
    return [model.name for model in col.models.all_names_and_ids()]


@collection_action
def modelNamesAndIds(col):
    return {model.name: model.id for model in col.models.all_names_and_ids()}


@collection_action
def modelFieldNames(col, modelName):
    return [field["name"] for field in _model(col, modelName)["flds"]]


@collection_action
def findNotes(col, query=None):
    return [] if query is None else list(col.find_notes(query))


@collection_action
def findCards(col, query=None):
    return [] if query is None else list(col.find_cards(query))


def guiBrowse(query=None, **_):
    # no browser window to open: the cards it would show
    return findCards(query=query)


def guiEditNote(note=None):
    raise ActionError("unsupported action")


def _fields_info(note):
    return {field["name"]: {"value": note.fields[field["ord"]], "order": field["ord"]}
            for field in note.note_type()["flds"]}


@collection_action
def notesInfo(col, notes=None, query=None):
    if notes is None:
        notes = [] if query is None else col.find_notes(query)
    result = []
    for note_id in notes:
        try:
            note = col.get_note(note_id)
        except (BackendError, TypeError, ValueError):
            result.append({})  # keeps the answer in step with the question
            continue
        result.append({"noteId": note.id, "tags": list(note.tags), "fields": _fields_info(note),
                       "modelName": note.note_type()["name"], "mod": note.mod,
                       "cards": list(col.card_ids_of_note(note.id))})
    return result


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
            "cardId": card.id, "fields": _fields_info(note), "fieldOrder": card.ord,
            "question": card.question(), "answer": card.answer(), "modelName": model["name"],
            "ord": card.ord, "deckName": col.decks.name(card.did), "css": model["css"],
            "factor": card.factor, "interval": card.ivl, "note": card.nid, "type": card.type,
            "queue": card.queue, "due": card.due, "reps": card.reps, "lapses": card.lapses,
            "left": card.left, "mod": card.mod})
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


def _can_add(col, request):
    """None if the note could be added, else why not. Media is not fetched for a check."""
    try:
        _checked_note(col, request)
    except ActionError as error:
        return str(error)
    return None


def addNote(note):
    media = _fetch_media(note)
    with worker.lock:
        note_id = _add(_collection(), note, media)
    _queue_sync()
    return note_id


def addNotes(notes):
    """Each note on its own: its id, or None when it was refused."""
    ids = []
    for request in notes:
        media = _fetch_media(request)
        try:
            with worker.lock:
                ids.append(_add(_collection(), request, media))
        except (ActionError, KeyError, TypeError) as error:
            log.info("AnkiConnect: addNotes: note %s refused: %s", len(ids), error)
            ids.append(None)
    if any(note_id is not None for note_id in ids):
        _queue_sync()
    return ids


def updateNoteFields(note):
    media = _fetch_media(note)
    with worker.lock:
        col = _collection()
        anki_note = _get_note(col, note["id"])
        for name, value in (note.get("fields") or {}).items():
            if name in anki_note:
                anki_note[name] = str(value)
        _attach_media(col, anki_note, media)
        col.update_note(anki_note)
    _queue_sync()


def updateNote(note):
    if "fields" not in note and "tags" not in note:
        raise ActionError('Must provide a "fields" or "tags" property.')
    if "fields" in note:
        updateNoteFields(note=note)
    if "tags" in note:
        updateNoteTags(note=note["id"], tags=note["tags"])


def updateNoteTags(note, tags):
    tags = _tags(tags)
    with worker.lock:
        col = _collection()
        anki_note = _get_note(col, note)
        anki_note.tags = tags
        col.update_note(anki_note)
    _queue_sync()


@collection_action
def getNoteTags(col, note):
    return list(_get_note(col, note).tags)


@collection_action
def getTags(col):
    return col.tags.all()


def addTags(notes, tags, add=True):
    with worker.lock:
        col = _collection()
        if add:
            col.tags.bulk_add(notes, tags)
        else:
            col.tags.bulk_remove(notes, tags)
    _queue_sync()


def removeTags(notes, tags):
    return addTags(notes=notes, tags=tags, add=False)


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


def unsuspend(cards):
    suspend(cards=cards, suspend=False)


@collection_action
def areSuspended(col, cards):
    answers = []
    for card_id in cards:
        try:
            answers.append(col.get_card(card_id).queue == -1)
        except (BackendError, TypeError, ValueError):
            answers.append(None)
    return answers


def storeMediaFile(filename, data=None, path=None, url=None, skipHash=None, deleteExisting=True):
    content = _media_bytes(data, path, url)
    with worker.lock:
        return _store(_collection(), filename, content, skipHash, deleteExisting)


@collection_action
def retrieveMediaFile(col, filename):
    path = os.path.join(col.media.dir(), unicodedata.normalize("NFC", os.path.basename(filename)))
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as file:
        return base64.b64encode(file.read()).decode("ascii")


@collection_action
def getMediaFilesNames(col, pattern="*"):
    return sorted(name for name in os.listdir(col.media.dir())
                  if fnmatch.fnmatch(name, pattern)
                  and os.path.isfile(os.path.join(col.media.dir(), name)))


@collection_action
def deleteMediaFile(col, filename):
    col.media.trash_files([filename])


@collection_action
def getMediaDirPath(col):
    return os.path.abspath(col.media.dir())


def sync():
    """Sync now and say what happened (the add-on answers null; we never do)."""
    try:
        if not worker.sync(_settings):
            raise ActionError("sync: not logged in: run `./run.sh login USERNAME`"
                              " (or ./run.sh login USERNAME) first")
    except errors.AnkisyncError as error:
        raise ActionError(f"sync failed: {error}") from None
    path = config.db_path(_settings)
    outcome = db.get_state(path, "last_sync_outcome")
    return {"synced": True, "outcome": outcome,
            "reapplied": outcome == "downloaded"}


def multi(actions, key=None):
    # each action keeps its own version (default 4), as in the add-on; one
    # without a key of its own borrows the key of the request that carried it
    return [handle({"key": key, **action} if isinstance(action, dict) else action)
            for action in actions]


def apiReflect(scopes=None, actions=None):
    if not isinstance(scopes, list):
        raise ActionError("scopes has invalid value")
    if not (actions is None or isinstance(actions, list)):
        raise ActionError("actions has invalid value")
    result = {"scopes": []}
    if "actions" in scopes:
        result["scopes"].append("actions")
        names = ACTIONS if actions is None else [a for a in actions if a in ACTIONS]
        result["actions"] = list(names)
    return result


ACTIONS = {func.__name__: func for func in [
    version, requestPermission, multi, sync, apiReflect,
    deckNames, deckNamesAndIds, createDeck, modelNames, modelNamesAndIds, modelFieldNames,
    findNotes, findCards, notesInfo, cardsInfo, guiBrowse, guiEditNote,
    canAddNotes, canAddNotesWithErrorDetail, addNote, addNotes,
    updateNoteFields, updateNote, updateNoteTags, getNoteTags, getTags, addTags, removeTags,
    suspend, unsuspend, areSuspended,
    storeMediaFile, retrieveMediaFile, getMediaFilesNames, deleteMediaFile, getMediaDirPath,
]}


# --- the dispatcher: one request in, the add-on's reply out ---------------

@functools.cache
def _parameters(func):
    """(names it takes, names it needs); None for names when it takes anything."""
    taken, needed = [], []
    for name, parameter in inspect.signature(func).parameters.items():
        if name == "col":
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            return None, needed
        taken.append(name)
        if parameter.default is parameter.empty:
            needed.append(name)
    return taken, needed


def _call(name, func, params):
    taken, needed = _parameters(func)
    missing = [param for param in needed if param not in params]
    if missing:
        raise ActionError(f"{name}: missing parameter: {', '.join(missing)}")
    if taken is not None:
        # unknown extra keys in params are accepted silently, as clients expect
        params = {key: value for key, value in params.items() if key in taken}
    return func(**params)


def _key_ok(key):
    expected = _settings.ankiconnect_key
    if not expected:
        return True
    return isinstance(key, str) and hmac.compare_digest(key.encode(), expected.encode())


def handle(request, allowed=True, origin=""):
    """The reply to one decoded request: bare result for version <= 4, else {result, error}."""
    if not isinstance(request, dict):
        return {"result": None, "error": "the request must be a JSON object with an action"}
    name = request.get("action", "")
    version = request.get("version", 4)
    params = request.get("params") or {}
    try:
        if not isinstance(version, int) or not isinstance(params, dict):
            raise ActionError("version must be a number and params an object")
        if name != "requestPermission" and not _key_ok(request.get("key")):
            raise ActionError("valid api key must be provided")
        func = ACTIONS.get(name) if isinstance(name, str) else None
        if func is None:
            raise ActionError("unsupported action")
        if func is requestPermission:
            params = {"origin": origin, "allowed": allowed}
        elif func is multi:
            params = {**params, "key": request.get("key")}
        result = _call(name, func, params)
    except ActionError as error:
        return {"result": None, "error": str(error)}
    except BackendError as error:  # e.g. a search Anki cannot parse, an unknown id
        return {"result": None, "error": str(error)}
    except KeyError as error:
        return {"result": None, "error": f"{name}: missing parameter: {error.args[0]}"}
    except Exception as error:
        log.exception("AnkiConnect: %s failed", name)
        return {"result": None, "error": f"{name} failed: {type(error).__name__}: {error}"}
    return result if version <= 4 else {"result": result, "error": None}


# --- HTTP: CORS as the add-on does it, then the dispatcher ---------------------

def origin_allowed(origin, allowlist):
    """Whether a browser origin may call; "scheme://*" entries match by prefix."""
    if origin is None or "*" in allowlist:
        return True
    for entry in allowlist:
        if entry == origin or entry.endswith("*") and origin.startswith(entry[:-1]):
            return True
    if "http://localhost" in allowlist:
        # as in the add-on: localhost allowed means any local page on any port
        host = origin.split("://", 1)[-1].rsplit(":", 1)[0]
        return origin.startswith(("http://", "https://")) and host in ("localhost", "127.0.0.1")
    return False


class Handler(BaseHTTPRequestHandler):
    """One HTTP request to the AnkiConnect port."""

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
        log.debug("AnkiConnect %s: " + format, self.client_address[0], *args)

    def _cors(self):
        origin = self.headers.get("Origin")
        allowlist = _settings.ankiconnect_origins
        allowed = origin_allowed(origin, allowlist)
        if "*" in allowlist:
            shown = "*"
        else:
            shown = origin if allowed and origin else "http://localhost"
        return allowed, origin, shown

    def _send(self, status, body, allow_origin, content_type="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", allow_origin)
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
        self.send_header("Vary", "Origin")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_OPTIONS(self):
        allowed, _, shown = self._cors()
        extra = []
        if allowed and self.headers.get("Access-Control-Request-Private-Network") == "true":
            # lets a page on a public origin in the allowlist reach this local port
            extra.append(("Access-Control-Allow-Private-Network", "true"))
        self._send(200, b"", shown, extra=extra)

    def do_POST(self):
        allowed, origin, shown = self._cors()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            reply = {"result": None, "error": f"request body too large (over {MAX_BODY // 2**20} MB)"}
            return self._send(413, json.dumps(reply).encode(), shown)
        body = self.rfile.read(length)
        if not body:
            if not allowed:
                return self._send(403, b"", shown)
            return self._send(200, f"AnkiConnect v.{API_VERSION}".encode(), shown, "text/plain")
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
            if not allowed:
                return self._send(403, b"", shown)
            reply = {"result": None, "error": f"the request is not JSON: {error}"}
            return self._send(200, json.dumps(reply).encode(), shown)
        asks_permission = isinstance(request, dict) and request.get("action") == "requestPermission"
        if not allowed and not asks_permission:
            log.info("AnkiConnect: refused origin %s (ANKISYNC_ANKICONNECT_ORIGINS)", origin)
            return self._send(403, b"", shown)
        reply = handle(request, allowed, origin or "")
        # a refused origin may still read its "denied"
        self._send(200, json.dumps(reply).encode(), shown if allowed else origin)

    do_GET = do_POST

    def handle_one_request(self):
        # the error boundary of this thread: a fault is logged, never a traceback sent
        try:
            super().handle_one_request()
        except Exception:
            log.exception("AnkiConnect: request from %s failed", self.client_address[0])
            self.close_connection = True


def start(settings):
    """Serve AnkiConnect on a daemon thread; the server, or None when it cannot."""
    global _settings, _server
    _settings = settings
    host, port = settings.ankiconnect_listen  # off loopback, config made sure of a key
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        log.warning("AnkiConnect not started: cannot listen on %s:%s (%s); is Anki with the"
                    " AnkiConnect add-on running? Set ANKISYNC_ANKICONNECT_LISTEN to another"
                    " port, or empty to turn it off", host, port, error.strerror or error)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ankiconnect", daemon=True).start()
    _server = server
    log.info("AnkiConnect on http://%s:%s (key %s)", host, port,
             "required" if settings.ankiconnect_key else "not required")
    return server


def stop():
    """Stop serving, before the worker closes the collection (a worker shutdown hook)."""
    global _server
    server, _server = _server, None
    if server is not None:
        server.shutdown()
        server.server_close()
