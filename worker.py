"""What the worker does with a card job: speak it, add the note, sync.

Worker process only: this module brings in anki and google.cloud. It keeps the
collection open between jobs (opening it costs time and ~60 MB), and it is the
only code that ever opens it.
"""

import json
import logging
import threading
import time

import ankiweb
import config
import credentials
import db
import jobs
import notes
import tts
from errors import BadNote, SyncAuthError

log = logging.getLogger(__name__)

_collection = None
# Held by whoever uses the collection: the job running in the main thread, or
# the AnkiConnect endpoint's thread (ankiconnect.py) in this same process.
lock = threading.RLock()


def collection(settings):
    """The open collection, opened on first use and kept."""
    global _collection
    if _collection is None:
        _collection = ankiweb.open_collection(str(config.collection_path(settings)))
    return _collection


def close():
    global _collection
    if _collection is not None:
        _collection.close()
        _collection = None


def _call_timeout(settings):
    # Each network call gets a slice of the job's time, so that a hung server
    # ends in a retry instead of the whole job timing out.
    return max(5, min(30, int(settings.task_timeout / 4)))


def google_key(settings):
    """The TTS key: from the environment or .env, else from `setup`."""
    stored = credentials.load(config.credentials_path(settings))
    return settings.google_api_key or stored.get("google_api_key")


def speak(settings, card):
    """The two clips (word, example sentence), or None when no TTS is set up."""
    key = google_key(settings)
    if not tts.available(key):
        return None
    options = dict(voice=settings.tts_voice, api_key=key,
                   endpoint=settings.google_tts_endpoint, timeout=_call_timeout(settings))
    media = config.media_dir(settings)
    return {"word": tts.ensure_clip(media, card["word"], **options),
            "text": tts.ensure_clip(media, card["englishExample"], **options)}


def add(settings, col, job_id, card, audio):
    """Add the job's note (or find it, on a re-run) and record it on the job."""
    audio = audio or {}
    note_id, card_ids = notes.add_card(col, job_id, card, settings.deck,
                                       audio.get("word"), audio.get("text"))
    result = {"noteId": note_id, "cardIds": card_ids, "deck": settings.deck,
              "audio": audio or None}
    if not audio:
        result["warning"] = ("made without audio: no Google text-to-speech credentials are set"
                             " (ANKISYNC_GOOGLE_API_KEY, or run ./run.sh setup)")
    jobs.mark_added(config.db_path(settings), job_id, result)
    return result


def make_card(settings, job):
    """Run one card job to the end; errors say whether to retry."""
    path = config.db_path(settings)
    card = json.loads(job["request"])
    started = time.monotonic()
    audio = speak(settings, card)  # clips are cached: a re-run does not speak again
    log.info("job %s: speech %s in %.2fs", job["id"], "made" if audio else "skipped",
             time.monotonic() - started)
    jobs.set_step(path, job["id"], "adding")
    with lock:
        result = add(settings, collection(settings), job["id"], card, audio)
    log.info("job %s: note %s added", job["id"], result["noteId"])
    jobs.set_step(path, job["id"], "syncing")
    if not sync(settings):
        log.info("job %s: not synced: no sync login yet (python ankisync.py login USER)",
                 job["id"])


def reapply(settings, col):
    """After a full download, add again the notes the server did not have."""
    path = config.db_path(settings)
    for job in jobs.added(path):
        if notes.has_note(col, job["id"]):
            continue
        try:
            if job["kind"] == "ankiconnect":
                import ankiconnect
                ankiconnect.readd(col, job)
            else:
                add(settings, col, job["id"], json.loads(job["request"]),
                    json.loads(job["result"]).get("audio"))
        except BadNote as error:  # e.g. the server's note type lacks our fields
            log.warning("job %s: could not re-apply: %s", job["id"], error)
            jobs.mark_failure(path, job["id"], "BadNote", str(error))
            continue
        log.info("job %s: note re-applied after full download", job["id"])


def session(settings):
    """The stored sync session, or None before any login."""
    stored = credentials.load(config.credentials_path(settings)).get("sync")
    if stored and stored.get("login_endpoint") != settings.sync_endpoint:
        raise SyncAuthError(
            f"the sync login was made for {stored.get('login_endpoint') or config.ANKIWEB},"
            f" but ANKISYNC_SYNC_ENDPOINT is now {settings.sync_endpoint or config.ANKIWEB}:"
            f" run `python ankisync.py login USERNAME` again")
    return stored


def sync(settings):
    """Sync collection and media; False when there is no login to sync with."""
    path = config.db_path(settings)
    stored = session(settings)
    if not stored:
        return False
    began = time.time()
    try:
        with lock:
            outcome = ankiweb.sync(collection(settings), stored["hkey"], stored["endpoint"],
                                   reapply=lambda col: reapply(settings, col),
                                   io_timeout=_call_timeout(settings))
    except Exception as error:
        db.set_state(path, last_sync_error=f"{type(error).__name__}: {error}",
                     last_sync_error_at=str(time.time()))
        raise
    if outcome.get("new_endpoint"):
        credentials.update(config.credentials_path(settings),
                           sync={**stored, "endpoint": outcome["new_endpoint"]})
    jobs.mark_synced(path, began)
    db.set_state(path, last_sync_at=str(time.time()), last_sync_outcome=outcome["outcome"],
                 last_sync_error="")
    log.info("synced (%s) in %.2fs", outcome["outcome"], time.time() - began)
    return True
