"""What the worker does with a card job: speak it, add the note, sync.

Worker process only: this module brings in anki and google.cloud. It keeps the
collection open between jobs (opening it costs time and ~60 MB), and it is the
only code that ever opens it.
"""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from huey.exceptions import TaskTimeout

import ankiweb
import config
import credentials
import db
import jobs
import notes
import tts
from errors import AnkisyncError, BadNote, SyncAuthError

log = logging.getLogger(__name__)

TTS_IN_FLIGHT = 8  # text-to-speech requests at once: fast, yet gentle on the quota
_collection = None
_speakers = None  # the thread pool that speaks, made on first use
# Whether this worker has synced once before adding notes: a restored data dir
# then finds the server's copies of its notes (by guid) instead of adding them again.
_pulled = False
# Held by whoever uses the collection: the job running in the main thread, or
# the AnkiConnect endpoint's thread (ankiconnect.py) in this same process.
lock = threading.RLock()
sync_lock = threading.Lock()  # one sync at a time, media included


def collection(settings):
    """The open collection, opened on first use and kept."""
    global _collection
    if _collection is None:
        _collection = ankiweb.open_collection(str(config.collection_path(settings)))
    return _collection


def close():
    """Close the collection (worker shutdown)."""
    global _collection
    with lock:  # an AnkiConnect action in progress finishes first
        if _collection is not None:
            _collection.close()
            _collection = None


def drop_collection():
    """Close the collection after a timeout cut an anki call short; reopened on next use."""
    global _collection
    with lock:
        if _collection is not None:
            try:
                _collection.close()
            except Exception:
                log.warning("closing the collection after a timeout failed", exc_info=True)
            _collection = None


def _call_timeout(settings):
    # Each network call gets a slice of the job's time, so that a hung server
    # ends in a retry instead of the whole job timing out.
    return max(5, min(30, int(settings.task_timeout / 4)))


def google_key(settings):
    """The TTS key: from the environment or .env, else from `setup`."""
    stored = credentials.load(config.credentials_path(settings))
    return settings.google_api_key or stored.get("google_api_key")


def speak_all(settings, cards):
    """Clips for many cards at once, a few requests in flight: {job id: clips or error}.

    A card's clips are {"word": name, "text": name}, or None when no voice is
    set up. The same text is requested once, however many cards hold it.
    Each job keeps the voice it was first spoken in (a re-run after a change
    of voice reuses the clips already made, and the note's clips are those).
    """
    global _speakers
    key = google_key(settings)
    provider = tts.choose(settings.tts, key)
    if not cards:
        return {}
    if provider is None:
        return {job_id: None for job_id in cards}
    voice = settings.espeak_voice if provider == "espeak" else settings.tts_voice
    voices = jobs.fix_voices(config.db_path(settings), list(cards), [provider, voice])
    options = dict(provider=provider, api_key=key, endpoint=settings.google_tts_endpoint,
                   timeout=_call_timeout(settings), temp_dir=tts.temp_dir(settings.data_dir))
    media = config.media_dir(settings)
    if _speakers is None:
        _speakers = ThreadPoolExecutor(TTS_IN_FLIGHT, thread_name_prefix="tts")

    def voice_of(job_id):  # another provider than the job's (a key removed): today's voice
        fixed = voices.get(job_id)
        return fixed[1] if fixed and fixed[0] == provider else voice

    wanted = {(text, voice_of(job_id)) for job_id, card in cards.items()
              for text in (card["word"], card["englishExample"])}
    futures = {(text, spoken_in): _speakers.submit(tts.ensure_clip, media, text,
                                                   voice=spoken_in, **options)
               for text, spoken_in in wanted}
    clips = {}
    for job_id, card in cards.items():
        try:
            clips[job_id] = {"word": futures[card["word"], voice_of(job_id)].result(),
                             "text": futures[card["englishExample"], voice_of(job_id)].result()}
        except TaskTimeout:
            raise
        except Exception as error:  # this card's outcome; the others go on
            clips[job_id] = error
    return clips


def add(settings, col, job_id, card, audio):
    """Add the job's note (or find it, on a re-run) and record it on the job."""
    audio = audio or {}
    note_id, card_ids = notes.add_card(col, job_id, card, settings.deck,
                                       audio.get("word"), audio.get("text"))
    result = {"noteId": note_id, "cardIds": card_ids, "deck": settings.deck,
              "audio": audio or None}
    if not audio:
        result["warning"] = ("made without audio: no voice is set up (set ANKISYNC_GOOGLE_API_KEY"
                             " or run ./run.sh setup for Google's, or install espeak-ng)")
    jobs.mark_added(config.db_path(settings), job_id, result)
    return result


def make_cards(settings, batch, claim_more):
    """Speak, add and sync a batch of card jobs; {job id: None if done, else the error}.

    claim_more() gives jobs that arrived while the batch was being spoken:
    they are spoken too and join the batch. One job's failure is its own: the
    others still get their notes, and all notes added go up in one sync.
    """
    path = config.db_path(settings)
    cards, outcome, more = {}, {}, batch
    while more:
        started = time.monotonic()
        new = {job["id"]: json.loads(job["request"]) for job in more}
        # A job whose note is already added (its sync failed) keeps that note's
        # clips: nothing is spoken again, whatever the voice is now.
        made = {job["id"]: json.loads(job["result"]).get("audio") for job in more
                if job["added_at"] is not None and job["result"]}
        outcome.update(made)
        outcome.update(speak_all(settings, {i: c for i, c in new.items() if i not in made}))
        cards.update(new)
        took = time.monotonic() - started
        for job_id in new.keys() - made.keys():
            if not isinstance(outcome[job_id], Exception):
                log.info("job %s: %s in %.2fs", job_id,
                         "spoken" if outcome[job_id] else "no voice, no audio", took)
        more = claim_more()
    spoken = [job_id for job_id in cards if not isinstance(outcome[job_id], Exception)]
    jobs.set_step(path, spoken, "adding")
    if spoken and not _pulled:
        pull(settings)
    added = []
    with lock:
        col = collection(settings)
        for job_id in spoken:
            try:
                result = add(settings, col, job_id, cards[job_id], outcome[job_id])
            except TaskTimeout:
                raise
            except Exception as error:
                outcome[job_id] = error
                continue
            outcome[job_id] = None
            added.append(job_id)
            log.info("job %s: note %s added", job_id, result["noteId"])
    if added:
        jobs.set_step(path, added, "syncing")
        try:
            synced = sync(settings)
            for job_id in added:
                log.info("job %s: %s", job_id, "synced" if synced else
                         "not synced: no sync login yet (./run.sh login USER)")
        except TaskTimeout:
            raise
        except Exception as error:
            outcome.update(dict.fromkeys(added, error))
    return outcome


def pull(settings):
    """The first batch of a worker syncs before adding (one sync per worker start).

    A data dir restored from a backup holds jobs whose notes are already on
    the server: synced first, the collection has them, and they are found by
    guid instead of being added a second time.
    """
    try:
        sync(settings)
    except AnkisyncError as error:  # the sync after adding will say it; duplicates are undone then
        log.info("sync before adding failed: %s", error)


def undouble(settings, col):
    """Remove second notes of one job (same guid), keeping the oldest; how many went.

    A job whose note went up from a data dir later restored from a backup
    adds it again (another note id) unless a sync brought the first one back
    before: after the next sync both are here. The older note is the one every
    device already has; the job's result is pointed at it.
    """
    doubled = col.db.all("select guid, id from notes where guid in (select guid from notes"
                         " group by guid having count(*) > 1) order by id")
    if not doubled:
        return 0
    ours = {notes.note_guid(job["id"]): job for job in jobs.added(config.db_path(settings))}
    kept, extra = {}, []
    for guid, note_id in doubled:
        if guid not in ours:  # another client's doubles are not ours to judge
            continue
        if guid in kept:
            extra.append(note_id)
        else:
            kept[guid] = note_id
    if not extra:
        return 0
    col.remove_notes(extra)
    for guid, note_id in kept.items():
        job = ours[guid]
        result = {**json.loads(job["result"] or "{}"), "noteId": note_id,
                  "cardIds": list(col.card_ids_of_note(note_id))}
        jobs.mark_added(config.db_path(settings), job["id"], result)
    log.info("removed %s second copies of notes (a restored backup added them again)",
             len(extra))
    return len(extra)


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
            f" run `./run.sh login USERNAME` again")
    return stored


def sync(settings):
    """Sync collection and media; False when there is no login to sync with."""
    global _pulled
    path = config.db_path(settings)
    stored = session(settings)
    if not stored:
        return False
    began = time.time()
    options = dict(reapply=lambda col: reapply(settings, col),
                   io_timeout=_call_timeout(settings))
    try:
        with sync_lock:
            with lock:
                col = collection(settings)
                outcome = ankiweb.sync(col, stored["hkey"], stored["endpoint"],
                                       wait_media=False, **options)
            # The media sync runs by itself: AnkiConnect may read meanwhile.
            ankiweb.wait_for_media(col, outcome["new_endpoint"] or stored["endpoint"],
                                   auth=outcome["auth"])
            with lock:
                if outcome["outcome"] != "no_changes" and undouble(settings, col):
                    ankiweb.sync(col, stored["hkey"], outcome["new_endpoint"]
                                 or stored["endpoint"], **options)  # the removals go up
    except Exception as error:
        db.set_state(path, last_sync_error=f"{type(error).__name__}: {error}",
                     last_sync_error_at=str(time.time()))
        raise
    del outcome["auth"]
    if outcome.get("new_endpoint"):
        credentials.update(config.credentials_path(settings),
                           sync={**stored, "endpoint": outcome["new_endpoint"]})
    _pulled = True  # the collection holds what the server had
    jobs.mark_synced(path, began)
    db.set_state(path, last_sync_at=str(time.time()), last_sync_outcome=outcome["outcome"],
                 last_sync_error="")
    log.info("synced (%s) in %.2fs", outcome["outcome"], time.time() - began)
    return True
