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

The service runs all the time, unlike the add-on, so its door is narrower:
without a key only the user running ankisync may call (the kernel says who
owns the caller's socket); media `path`s come only from folders the user
named and `url`s only from public addresses (or ones the user allowed).
"""

import base64
import binascii
import errno
import fnmatch
import functools
import hashlib
import hmac
import html
import http.client
import inspect
import ipaddress
import json
import logging
import os
import socket
import stat
import struct
import sys
import threading
import time
import unicodedata
import urllib.parse
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
import throttle
import worker

log = logging.getLogger(__name__)

API_VERSION = 6
# The add-on has no limit; 32 MB is the base64 of a 24 MB file, far above the
# audio clips and pictures clients send. A body costs about three times its size
# while parsed and decoded, so big ones are also served only BIG_AT_ONCE at a
# time (eight 64 MB bodies at once took the worker to 1.7 GB).
MAX_BODY = 32 * 1024 * 1024
BIG_BODY = 1024 * 1024            # bodies above this are served BIG_AT_ONCE at a time
BIG_AT_ONCE = 2
MAX_REFUSED_BODY = 64 * 1024      # a refused origin's body is read only to answer requestPermission
MAX_DOWNLOAD = 32 * 1024 * 1024   # media fetched by url or read from a path
DOWNLOAD_TIMEOUT = 10             # seconds per network read, as the add-on's webTimeout
MAX_REDIRECTS = 5
READ_TIMEOUT = 30                 # seconds a client may stay silent mid-request
# Never a media source, whatever the folders allowed: our secrets and the kernel's.
NEVER_READ = ("/proc", "/sys", "/dev")
# Cloud metadata services: a fetch there hands out the machine's cloud credentials.
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
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

def _refuse_url(url, why):
    return ActionError(f"url is not allowed: {url}: {why}")


def _public(ip):
    """Whether an address is on the public internet (not this machine, the LAN, a cloud's metadata)."""
    if ip.version == 6:
        # an IPv4 address carried inside IPv6 is judged as itself
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo or (None, None))[1]
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _public(embedded):
            return False
    return ip.is_global and not ip.is_multicast and ip not in METADATA


def _target(url, parts):
    """The one address a URL's host resolves to, checked; connecting to it (not to
    the name again) leaves no room for a DNS answer that changes in between."""
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = _settings.ankiconnect_url_allow
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ActionError(f"{url} download failed: cannot find the host {host}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    for ip in addresses:
        if host.lower().rstrip(".") in allowed or any(
                ip.version == entry.version and ip in entry
                for entry in allowed if not isinstance(entry, str)):
            continue
        if not _public(ip):
            raise _refuse_url(url, "it is on this machine or a private network; to fetch"
                              f" from it, add {host} to ANKISYNC_ANKICONNECT_URL_ALLOW")
    return str(addresses[0]), port


def _cut(guard, live):
    """Hang up a download that ran out of time, waking the thread that reads it.

    By file descriptor: TLS wraps the socket object in a new one on the same
    descriptor, and the response keeps reading after the connection object
    let go of it. `live` is emptied (under `guard`) before the socket closes.
    """
    with guard:
        for fd in live:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # closed already
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.detach()


def _get(url, deadline):
    """One GET: ("redirect", next URL) or ("body", bytes)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ActionError(f"{url} is not an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ActionError(f"{url} is not an http:// or https:// URL")
    address, port = _target(url, parts)
    left = deadline - time.monotonic()
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, port, timeout=max(0.1, min(DOWNLOAD_TIMEOUT, left)))
    guard, live = threading.Lock(), []

    def connect(_, timeout, source=None):
        # the checked address, never a second lookup (Host header and TLS keep the name)
        sock = socket.create_connection((address, port), timeout, source)
        with guard:
            live.append(sock.fileno())
        return sock

    connection._create_connection = connect
    # the total deadline: a server dripping a byte at a time is cut off all the same
    timer = threading.Timer(max(0.0, left), _cut, [guard, live])
    timer.daemon = True
    timer.start()
    answer = None
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers={"User-Agent": "ankisync-ankiconnect"})
        answer = connection.getresponse()
        location = answer.getheader("Location")
        if answer.status in (301, 302, 303, 307, 308) and location:
            return "redirect", urllib.parse.urljoin(url, location)
        if answer.status != 200:
            raise ActionError(f"{url} download failed with return code {answer.status}")
        declared = answer.getheader("Content-Length") or ""
        data = bytearray()
        if not (declared.isdigit() and int(declared) > MAX_DOWNLOAD):
            while len(data) <= MAX_DOWNLOAD:
                chunk = answer.read1(64 * 1024)
                if not chunk:
                    break
                data += chunk
        if len(data) > MAX_DOWNLOAD or declared.isdigit() and int(declared) > MAX_DOWNLOAD:
            raise ActionError(f"{url} download failed: larger than {MAX_DOWNLOAD // 2**20} MB")
        if time.monotonic() >= deadline:  # cut off: what came is not the whole file
            raise TimeoutError
        return "body", bytes(data)
    except (OSError, ValueError, http.client.HTTPException) as error:
        # ValueError: a name or path http.client cannot send (InvalidURL, bad IDNA)
        if time.monotonic() >= deadline:
            raise ActionError(f"{url} download failed: it took longer than"
                              f" {_settings.ankiconnect_url_timeout:g} s") from None
        raise ActionError(f"{url} download failed: {type(error).__name__}") from None
    finally:
        with guard:
            live.clear()
        timer.cancel()
        if answer is not None:
            answer.close()
        connection.close()


def _download(url):
    """A media file by URL: http(s) to public addresses (or ANKISYNC_ANKICONNECT_URL_ALLOW),
    redirects checked the same way, bounded in time and size."""
    if not isinstance(url, str):
        raise ActionError(f"{url} is not an http:// or https:// URL")
    deadline = time.monotonic() + _settings.ankiconnect_url_timeout
    asked = url
    for _ in range(MAX_REDIRECTS + 1):
        kind, value = _get(url, deadline)
        if kind == "body":
            return value
        url = value
    raise ActionError(f"{asked} download failed: more than {MAX_REDIRECTS} redirects")


def _inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def _readable(real):
    """Whether a resolved path is in a folder the user named and outside our own files."""
    if any(_inside(real, never) for never in NEVER_READ):
        return False
    if _inside(real, os.path.realpath(_settings.data_dir)):
        return False
    return any(_inside(real, os.path.realpath(folder)) for folder in _settings.ankiconnect_paths)


def _read_path(path):
    """A local file's bytes, if it lies in ANKISYNC_ANKICONNECT_PATHS.

    The answer is the same whether a refused path exists or not, and the file
    opened is checked again (a symlink swapped in after the first check).
    """
    refused = ActionError(f"path is not allowed: {path}: AnkiConnect reads files only from the"
                          " folders in ANKISYNC_ANKICONNECT_PATHS; set it to the folders your"
                          " tools save media in, or send the file as \"data\"")
    if not isinstance(path, str) or "\0" in path or not os.path.isabs(path):
        raise refused
    real = os.path.realpath(path)
    if not _readable(real):
        raise refused
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise ActionError(f"cannot read {path}: no such file, or not readable") from None
    with os.fdopen(fd, "rb") as file:
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: cannot tell what was opened
            raise refused from None
        if not _readable(opened):
            raise refused
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ActionError(f"cannot read {path}: not a file")
        if info.st_size > MAX_DOWNLOAD:
            raise ActionError(f"cannot read {path}: larger than {MAX_DOWNLOAD // 2**20} MB")
        return file.read(MAX_DOWNLOAD)


def _media_bytes(data=None, path=None, url=None):
    """The bytes of a media file given as base64 data, a local path or a URL."""
    if data:
        try:
            return base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError, TypeError) as error:
            raise ActionError(f"media data is not valid base64: {error}") from None
    if path:
        return _read_path(path)
    if url:
        return _download(url)
    raise ActionError('You must provide a "data", "path", or "url" field.')


def _store(col, filename, content, skip_hash=None, delete_existing=True):
    """Write a media file; its stored name, or None when skipHash matched."""
    if not isinstance(filename, str) or not filename:
        raise ActionError("filename must be a non-empty string")
    if skip_hash is not None and hashlib.md5(content).hexdigest() == skip_hash:
        return None
    if delete_existing and _media_name(filename) == filename:
        # a name with a folder in it is flattened by write_data: nothing to replace
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


def _media_name(filename):
    """A file name of the media folder, as the add-on takes it (the last part), or None."""
    if not isinstance(filename, str) or "\0" in filename:
        return None
    name = unicodedata.normalize("NFC", os.path.basename(filename))
    return None if name in ("", ".", "..") else name


def _media_path(col, filename):
    """The media file's real path if it is a file right in the media folder, else None."""
    name = _media_name(filename)
    folder = os.path.realpath(col.media.dir())
    real = os.path.realpath(os.path.join(folder, name)) if name else None
    if real is None or os.path.dirname(real) != folder or not os.path.isfile(real):
        return None  # a symlink out of the folder counts as no file
    return real


@collection_action
def retrieveMediaFile(col, filename):
    path = _media_path(col, filename)
    if path is None:
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
    if _media_path(col, filename) is not None:
        col.media.trash_files([_media_name(filename)])


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


SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h: ask the kernel about one socket
NLMSG_ERROR = 2


def _diag_uid(family, client, server):
    """The owner of the TCP socket client -> server, asked of the kernel by netlink
    (NETLINK_SOCK_DIAG, an exact lookup: ~20 µs). None when there is no such
    socket here; OSError when this kernel cannot answer."""
    def address(ip):
        packed = socket.inet_pton(family, ip)
        return packed + bytes(16 - len(packed))
    # struct inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid:
    # ports and addresses in network order, interface, cookie (none)
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    request += struct.pack("!HH16s16s", client[1], server[1], address(client[0]),
                           address(server[0]))
    request += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    # struct nlmsghdr: length, type, flags (NLM_F_REQUEST), sequence, port id
    message = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 1, 1, 0) + request
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as netlink:  # NETLINK_SOCK_DIAG
        netlink.settimeout(1)
        netlink.sendto(message, (0, 0))
        answer = netlink.recv(8192)
    kind = struct.unpack_from("=H", answer, 4)[0]
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", answer, 16)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, os.strerror(code))
    # struct inet_diag_msg: 4 bytes, the 48-byte sockid, expires, rqueue, wqueue, uid
    return struct.unpack_from("=I", answer, 16 + 64)[0]


def _proc_net(family, address):
    """An (ip, port) as /proc/net/tcp{,6} writes it: each 32-bit word in host byte order."""
    packed = socket.inet_pton(family, address[0])
    words = "".join("%08X" % int.from_bytes(packed[i:i + 4], sys.byteorder)
                    for i in range(0, len(packed), 4))
    return f"{words}:{address[1]:04X}"


def _proc_uid(family, client, server):
    """The same from /proc/net/tcp{,6}: slower (it lists every socket: 11 ms with
    2,700 of them), for a kernel without sock_diag. The client's socket is the row
    whose local end is the client and whose remote end is us."""
    tables = [(family, client, server)]
    mapped = [ipaddress.ip_address(end[0].split("%")[0]) for end in (client, server)]
    if all(getattr(ip, "ipv4_mapped", None) for ip in mapped):
        # an IPv4 client of a dual-stack server is listed with the IPv4 sockets
        tables.append((socket.AF_INET, (str(mapped[0].ipv4_mapped), client[1]),
                       (str(mapped[1].ipv4_mapped), server[1])))
    for family, client, server in tables:
        local, remote = _proc_net(family, client), _proc_net(family, server)
        with open("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp") as rows:
            for row in rows:
                fields = row.split()
                if fields[1:3] == [local, remote]:
                    return int(fields[7])
    return None


def peer_uid(connection, peer):
    """The local user owning the client's end of a TCP connection; None when unknown
    (another machine, or a kernel that will not say)."""
    family, server = connection.family, connection.getsockname()
    try:
        return _diag_uid(family, peer, server)
    except (OSError, ValueError, struct.error):
        pass
    try:
        return _proc_uid(family, peer, server)
    except (OSError, ValueError, IndexError):
        return None


def _is_loopback(address):
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


class Server(ThreadingHTTPServer):
    """The listening socket; it also holds the wrong-key throttle of this server."""

    daemon_threads = True

    def __init__(self, address, handler):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.keys = throttle.Throttle()  # failed keys per address (per user on loopback)
        self.big_bodies = threading.BoundedSemaphore(BIG_AT_ONCE)

    def handle_error(self, request, client_address):
        # one short line for a client gone mid-request, a traceback for the rest
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.info("AnkiConnect: %s hung up (%s)", client_address[0], type(error).__name__)
        else:
            log.exception("AnkiConnect: request from %s failed", client_address[0])


class Handler(BaseHTTPRequestHandler):
    """One HTTP request to the AnkiConnect port."""

    timeout = READ_TIMEOUT  # a client that stops sending frees its thread

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

    def _refuse(self, status, error, allow_origin):
        """Answer without reading the body, and hang up."""
        self.close_connection = True
        body = b"" if error is None else json.dumps({"result": None, "error": error}).encode()
        self._send(status, body, allow_origin)

    def _caller(self):
        """(throttle unit, refusal or None): who is calling, and whether they may.

        With no key, only this user's own programs on this machine may call:
        another local user (or a process we cannot place) is refused. With a key,
        the key decides, and wrong keys are counted per address, per user on
        loopback so that another local user cannot lock this user out.
        """
        address = self.client_address[0]
        local = _is_loopback(address)
        uid = None
        if local or not _settings.ankiconnect_key:
            uid = peer_uid(self.connection, self.client_address)
        if _settings.ankiconnect_key:
            unit = f"{address} uid {uid}" if local else throttle.client({"REMOTE_ADDR": address})
            return unit, None
        if uid == os.getuid():
            return address, None
        log.warning("AnkiConnect: refused %s:%s: its socket belongs to %s, not to the user"
                    " running ankisync (uid %s); set ANKISYNC_ANKICONNECT_KEY to let it in"
                    " with the key", address, self.client_address[1],
                    "an unknown user" if uid is None else f"uid {uid}", os.getuid())
        return address, ("AnkiConnect here answers only programs of the user running"
                         " ankisync: set ANKISYNC_ANKICONNECT_KEY and send it as \"key\"")

    def _body(self, length):
        """The body, read in pieces; None when the client hung up before its end."""
        body = bytearray()
        try:
            while len(body) < length:
                chunk = self.rfile.read(min(length - len(body), 1024 * 1024))
                if not chunk:
                    break
                body += chunk
        except OSError as error:  # reset, or silent for READ_TIMEOUT
            log.info("AnkiConnect: %s hung up mid-request (%s)", self.client_address[0],
                     type(error).__name__)
            self.close_connection = True
            return None
        if len(body) < length:
            log.info("AnkiConnect: %s hung up after %d of %d bytes", self.client_address[0],
                     len(body), length)
            self.close_connection = True
            return None
        return body  # json.loads takes a bytearray: no second copy

    def do_OPTIONS(self):
        allowed, _, shown = self._cors()
        extra = []
        if allowed and self.headers.get("Access-Control-Request-Private-Network") == "true":
            # lets a page on a public origin in the allowlist reach this local port
            extra.append(("Access-Control-Allow-Private-Network", "true"))
        self._send(200, b"", shown, extra=extra)

    def do_POST(self):
        # everything that can refuse without the body does so before reading it
        allowed, origin, shown = self._cors()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return self._refuse(413, f"request body too large (over {MAX_BODY // 2**20} MB)", shown)
        if not allowed and length > MAX_REFUSED_BODY:
            log.info("AnkiConnect: refused origin %s (ANKISYNC_ANKICONNECT_ORIGINS)", origin)
            return self._refuse(403, None, shown)
        unit, refusal = self._caller()
        if refusal:
            return self._refuse(403, refusal, shown)
        if _settings.ankiconnect_key and self.server.keys.wait(unit):
            return self._refuse(200, "valid api key must be provided", shown)
        if length <= BIG_BODY:
            return self._answer(length, unit, allowed, origin, shown)
        # big bodies a few at a time: each costs several times its size in memory
        big = self.server.big_bodies
        if not big.acquire(blocking=False):
            log.info("AnkiConnect: %s waits: %d big requests are being served",
                     self.client_address[0], BIG_AT_ONCE)
            if not big.acquire(timeout=READ_TIMEOUT):
                return self._refuse(503, "busy: too many large requests at once; try again", shown)
        try:
            self._answer(length, unit, allowed, origin, shown)
        finally:
            big.release()

    def _answer(self, length, unit, allowed, origin, shown):
        """Read the body and answer it."""
        keys = self.server.keys
        body = self._body(length)
        if body is None:
            return
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
        if _settings.ankiconnect_key and isinstance(request, dict) and not asks_permission:
            # counted here, once a request: multi checks the key before its parts run
            if _key_ok(request.get("key")):
                keys.succeeded(unit)
            else:
                lockout = keys.failed(unit)
                log.warning("AnkiConnect: wrong key from %s%s", unit,
                            f"; refused for {lockout:g} s" if lockout else "")
        reply = handle(request, allowed, origin or "")
        # a refused origin may still read its "denied"
        self._send(200, json.dumps(reply).encode(), shown if allowed else origin)

    do_GET = do_POST

    def handle_one_request(self):
        # the error boundary of this thread: a fault is logged, never a traceback sent
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as error:
            log.info("AnkiConnect: %s hung up (%s)", self.client_address[0], type(error).__name__)
            self.close_connection = True
        except Exception:
            log.exception("AnkiConnect: request from %s failed", self.client_address[0])
            self.close_connection = True


def _record(settings, state, problem=None):
    """What health and `status` show about AnkiConnect; tied to this worker's pid, so a
    state left by an earlier run is never taken for the current one."""
    host, port = settings.ankiconnect_listen
    db.set_state(config.db_path(settings), ankiconnect=json.dumps({
        "state": state, "listen": f"{host}:{port}", "problem": problem,
        "pid": os.getpid(), "worker": os.getppid()}))


def start(settings):
    """Serve AnkiConnect on a daemon thread; the server, or None when it cannot."""
    global _settings, _server
    _settings = settings
    host, port = settings.ankiconnect_listen  # off loopback, config made sure of a key
    try:
        server = Server((host, port), Handler)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            problem = (f"AnkiConnect port {host}:{port} is held by another program: clients'"
                       " notes and key go to it, not to ankisync. Stop it (Anki desktop with the"
                       " AnkiConnect add-on?) or set ANKISYNC_ANKICONNECT_LISTEN to another"
                       " port (or empty to turn AnkiConnect off), then restart ankisync")
            state = "held"
        else:
            problem = (f"AnkiConnect cannot listen on {host}:{port}"
                       f" ({error.strerror or error}): fix ANKISYNC_ANKICONNECT_LISTEN")
            state = "failed"
        log.warning("%s", problem)
        _record(settings, state, problem)
        return None
    threading.Thread(target=server.serve_forever, name="ankiconnect", daemon=True).start()
    _server = server
    _record(settings, "listening")
    log.info("AnkiConnect on http://%s:%s (%s)", host, port,
             "key required" if settings.ankiconnect_key
             else "no key: only programs of this user on this machine may call it")
    return server


def stop():
    """Stop serving, before the worker closes the collection (a worker shutdown hook)."""
    global _server
    server, _server = _server, None
    if server is not None:
        server.shutdown()
        server.server_close()
