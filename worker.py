"""What the worker does with a card job: speak it, add the note, sync.

Worker process only: this module brings in anki and google.cloud. It keeps the
collection open between jobs (opening it costs time and ~60 MB), and it is the
only code that ever opens it. One `Worker` per worker process owns it: the
open collection, its lock, the sync lock and the TTS threads.
"""

import json
import logging
import os
import threading
import time

from huey.exceptions import TaskTimeout

import ankiweb
import card_options
import config
import credentials
import db
import duplicates
import jobs
import notes
import tts
import tts_limit
import word_audio
from errors import AnkisyncError, BadNote, SyncAuthError, WorkerTrouble

log = logging.getLogger(__name__)


def _call_timeout(settings):
    # Each network call gets a slice of the job's time, so that a hung server
    # ends in a retry instead of the whole job timing out.
    return max(5, min(30, int(settings.task_timeout / 4)))


def session(settings):
    """The stored sync session, or None before any login."""
    stored = credentials.load(config.credentials_path(settings)).get("sync")
    if stored and stored.get("login_endpoint") != settings.sync_endpoint:
        raise SyncAuthError(
            f"the sync login was made for {stored.get('login_endpoint') or config.ANKIWEB},"
            f" but ANKISYNC_SYNC_ENDPOINT is now {settings.sync_endpoint or config.ANKIWEB}:"
            f" run `./run.sh login USERNAME` again")
    return stored


class Worker:
    """The collection's one owner in a worker process: opens, holds, locks, syncs, closes it.

    Made by the worker's start-up hook (huey_tasks) and handed to the tasks and
    to the AnkiConnect server, which run in this same process. Making one
    touches no disk: the collection opens on first use.
    """

    def __init__(self, settings, reappliers=None, notifier=None):
        self.settings = settings
        self.notifier = notifier  # told how each sync went (notify.Notifier: the alerts)
        self.db = config.db_path(settings)
        # How to add again, after a full download, a note of a job of another kind
        # than "card" ({kind: function(col, job)}): AnkiConnect's, given at start.
        self.reappliers = dict(reappliers or {})
        # Held by whoever uses the collection: the job running in the main thread, or
        # the AnkiConnect endpoint's threads in this same process.
        self.lock = threading.RLock()
        # One sync at a time, media included; reentrant, so that a schema change can hold
        # it from the sync before the change through the full upload after it.
        self.sync_lock = threading.RLock()
        self._collection = None
        self._speakers = None  # the thread pool that speaks, made on first use
        self._ahead = None  # the thread speaking the next cards during a sync (speak_ahead)
        self._tts_clients = {}  # Google's, kept: see tts.synthesize
        # Whether this worker has synced once before adding notes: a restored data dir
        # then finds the server's copies of its notes (by guid) instead of adding them again.
        self.pulled = False
        self.closed = False  # after close(): nothing opens the collection again

    def collection(self):
        """The open collection, opened on first use and kept."""
        with self.lock:
            if self.closed:  # a thread still busy at shutdown (warm_up, a backup)
                raise WorkerTrouble("the worker is stopping; the job goes on at its next start")
            if self._collection is None:
                self._collection = ankiweb.open_collection(
                    str(config.collection_path(self.settings)))
                duplicates.on_open(self.db, self._collection)
            return self._collection

    def close(self):
        """Close the collection and the TTS threads (worker shutdown)."""
        with self.lock:  # an AnkiConnect action in progress finishes first
            self.closed = True
            if self._collection is not None:
                self._collection.close()
                self._collection = None
        if self._speakers is not None:
            self._speakers.shutdown(wait=False, cancel_futures=True)
            self._speakers = None

    def drop_collection(self):
        """Close the collection after a timeout cut an anki call short; reopened on next use."""
        with self.lock:
            if self._collection is not None:
                try:
                    self._collection.close()
                except Exception:
                    log.warning("closing the collection after a timeout failed", exc_info=True)
                self._collection = None

    def speak_all(self, cards):
        """Clips for many cards at once, in flight as tts_limit allows: {job id: clips or error}.

        A card's clips are {"word": name, "text": name}, or None when no voice is
        set up. The same text is requested once, however many cards hold it. A card
        is spoken in its own voice and rate if it gives them, and its wordAudioUrl,
        if any, is fetched as its word's clip (word_audio.py).
        Each job keeps the voice it was first spoken in (a re-run after a change
        of voice reuses the clips already made, and the note's clips are those).
        """
        settings = self.settings
        keys = tts.keys(settings)
        provider = tts.choose(settings.tts, keys["google"])
        if not cards:
            return {}
        spoken = {}  # job id -> the voice it is spoken in, when there is a voice
        if provider is not None:
            current = tts.voice_for(provider, settings)
            asked = {job_id: card_options.voice_for_card(current, card)
                     for job_id, card in cards.items()}
            kept = jobs.fix_voices(self.db, {job_id: tts.stored(voice)
                                             for job_id, voice in asked.items()})
            # its first voice, unless that provider is no longer set up
            spoken = {job_id: tts.job_voice(kept.get(job_id), asked[job_id], settings, keys)
                      for job_id in cards}
        options = dict(settings=settings, keys=keys, temp_dir=tts.temp_dir(settings.data_dir),
                       clients=self._tts_clients)
        media = config.media_dir(settings)
        if self._speakers is None:
            # requests in flight per provider, slowed down by 429s (tts_limit.py)
            self._speakers = tts_limit.Speakers(settings)
        # A card's own recording of its word replaces the spoken word; the sentence is spoken.
        recordings = {url: self._speakers.submit(
            word_audio.ensure, url, media, hosts=settings.audio_url_hosts,
            timeout=_call_timeout(settings), temp_dir=options["temp_dir"])
            for url in {card.get("wordAudioUrl") for card in cards.values()} if url}
        wanted = {(text, spoken[job_id]) for job_id, card in cards.items() if job_id in spoken
                  for text in (card["englishExample"],) + (
                      () if card.get("wordAudioUrl") else (card["word"],))}
        futures = {(text, voice): self._speakers.speak(voice.provider, tts.ensure_clip, media,
                                                       text, voice, **options)
                   for text, voice in wanted}
        clips = {}
        for job_id, card in cards.items():
            try:
                made = {}
                if card.get("wordAudioUrl"):
                    made["word"] = recordings[card["wordAudioUrl"]].result()
                if job_id in spoken:
                    voice = spoken[job_id]
                    if "word" not in made:
                        made["word"] = futures[card["word"], voice].result()
                    made["text"] = futures[card["englishExample"], voice].result()
                clips[job_id] = made or None
            except TaskTimeout:
                raise
            except Exception as error:  # this card's outcome; the others go on
                clips[job_id] = card_options.blame(error, card)
        return clips

    def add(self, col, job_id, card, audio):
        """Add the job's note (or find it, on a re-run) and record it on the job."""
        audio = audio or {}
        deck = card.get("deck") or self.settings.deck  # the card's options (card_options.py)
        note_id, card_ids = notes.add_card(col, job_id, card, deck, audio.get("word"),
                                           audio.get("text"), tags=card.get("tags", ()))
        result = {"noteId": note_id, "cardIds": card_ids, "deck": deck,
                  "tags": card.get("tags", []), "audio": audio or None}
        if "text" not in audio:
            result["warning"] = (("made without audio" if not audio else "its sentence made"
                                  " without audio") + ": no voice is set up (set"
                                 " ANKISYNC_GOOGLE_API_KEY or run ./run.sh setup for Google's,"
                                 " or install espeak-ng)")
        jobs.mark_added(self.db, job_id, result)
        return result

    def make_cards(self, batch, claim_more, ahead=0):
        """Speak, add and sync a batch of card jobs; {job id: None if done, else the error}.

        claim_more() gives jobs that arrived while the batch was being spoken:
        they are spoken too and join the batch. One job's failure is its own: the
        others still get their notes, and all notes added go up in one sync. During
        that sync, up to `ahead` waiting cards are spoken for the next batch.
        """
        cards, outcome = self._speak_batch(batch, claim_more)
        spoken = [job_id for job_id in cards if not isinstance(outcome[job_id], Exception)]
        jobs.set_step(self.db, spoken, "adding")
        if spoken and not self.pulled:
            self.pull()
        added = self._add_batch(spoken, cards, outcome)
        if added:
            self._sync_batch(added, outcome, ahead)
        return outcome

    def _speak_batch(self, batch, claim_more):
        """The batch's cards and their clips (or errors), with the jobs that joined meanwhile."""
        if self._ahead is not None:  # what it spoke is on disk: found, not asked again
            self._ahead.join()
            self._ahead = None
        cards, outcome, more = {}, {}, batch
        while more:
            started = time.monotonic()
            new = {job["id"]: json.loads(job["request"]) for job in more}
            # A job whose note is already added (its sync failed) keeps that note's
            # clips: nothing is spoken again, whatever the voice is now.
            made = {job["id"]: json.loads(job["result"]).get("audio") for job in more
                    if job["added_at"] is not None and job["result"]}
            outcome.update(made)
            outcome.update(self.speak_all({i: c for i, c in new.items() if i not in made}))
            cards.update(new)
            took = time.monotonic() - started
            for job_id in new.keys() - made.keys():
                if not isinstance(outcome[job_id], Exception):
                    log.info("job %s: %s in %.2fs", job_id,
                             "spoken" if outcome[job_id] else "no voice, no audio", took)
            jobs.mark_spoken(self.db, {job_id: took for job_id in new.keys() - made.keys()
                                       if outcome[job_id]
                                       and not isinstance(outcome[job_id], Exception)})
            more = claim_more()
        return cards, outcome

    def _add_batch(self, spoken, cards, outcome):
        """Add the spoken jobs' notes; the ids of those added (outcome None), others' errors."""
        added, made = [], []
        with self.lock:
            col = self.collection()
            for job_id in spoken:
                try:
                    result = self.add(col, job_id, cards[job_id], outcome[job_id])
                except TaskTimeout:
                    raise
                except Exception as error:
                    outcome[job_id] = error
                    continue
                outcome[job_id] = None
                added.append(job_id)
                made.append((job_id, cards[job_id], result))
                log.info("job %s: note %s added", job_id, result["noteId"])
        duplicates.record(self.db, made)  # before the jobs finish: refuse sees one or the other
        return added

    def _sync_batch(self, added, outcome, ahead):
        """One sync for every note added; its error becomes each of those jobs' outcome."""
        jobs.set_step(self.db, added, "syncing")
        self.speak_ahead(ahead)
        try:
            synced = self.sync()
        except TaskTimeout:
            raise
        except Exception as error:
            outcome.update(dict.fromkeys(added, error))
            return
        for job_id in added:
            log.info("job %s: %s", job_id, "synced" if synced else
                     "not synced: no sync login yet (./run.sh login USER)")

    def speak_ahead(self, limit):
        """Speak the cards waiting for the next batch while this one syncs.

        A sync is round trips, and so is speaking: side by side, a long burst
        costs one of them per batch instead of both. The clips land in the media
        folder, where the next batch finds them (tts.ensure_clip's cache). A card
        cancelled meanwhile leaves its clips unused (Anki's Check Media lists them).
        """
        waiting = jobs.pending_cards(self.db, limit) if limit else {}
        if waiting:
            self._ahead = threading.Thread(target=self._speak_quietly, args=(waiting,),
                                           name="speak-ahead", daemon=True)
            self._ahead.start()

    def _speak_quietly(self, cards):
        try:
            self.speak_all(cards)
        except Exception:  # the batch that claims these cards speaks them and says what fails
            log.debug("speaking ahead failed", exc_info=True)

    def pull(self):
        """Sync once before the worker's first notes are added (warm_up does it at start).

        A data dir restored from a backup holds jobs whose notes are already on
        the server: synced first, the collection has them, and they are found by
        guid instead of being added a second time.
        """
        with self.sync_lock:
            if self.pulled:  # warm_up's pull finished while this one waited for it
                return
            try:
                self.sync()
            except AnkisyncError as error:
                # the sync after adding will say it; duplicates are undone then
                log.info("sync before adding failed: %s", error)

    def warm_up(self):
        """At worker start, what the first card would wait for: the voice's client, the
        collection, the sync before the first notes. Run in a thread of its own; a card
        that comes meanwhile waits only for what is not done yet."""
        started = time.monotonic()
        # health's worker.ready: "consumer pid:this pid" once this process is warm
        # (health checks that it still runs); unset while one replacing a dead one warms up
        db.set_state(self.db, worker_ready="")
        try:
            tts.prepare(self.settings, tts.keys(self.settings), self._tts_clients)
            if config.collection_path(self.settings).exists():
                self.collection()  # no collection yet: it is made with the first card
                self.pull()
        except Exception:  # the first card tries each again, and says what fails
            log.warning("warming up failed", exc_info=True)
        db.set_state(self.db, worker_ready=f"{os.getppid()}:{os.getpid()}")
        log.info("worker warmed up in %.2f s", time.monotonic() - started)

    def undouble(self, col):
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
        ours = {notes.note_guid(job["id"]): job for job in jobs.added(self.db)}
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
            jobs.mark_added(self.db, job["id"], result)
        log.info("removed %s second copies of notes (a restored backup added them again)",
                 len(extra))
        return len(extra)

    def reapply(self, col):
        """After a full download, add again the notes the server did not have."""
        path = self.db
        for job in jobs.added(path):
            if notes.has_note(col, job["id"]):
                continue
            try:
                if job["kind"] in self.reappliers:
                    self.reappliers[job["kind"]](col, job)
                else:
                    self.add(col, job["id"], json.loads(job["request"]),
                        json.loads(job["result"]).get("audio"))
            except BadNote as error:  # e.g. the server's note type lacks our fields
                log.warning("job %s: could not re-apply: %s", job["id"], error)
                jobs.mark_failure(path, job["id"], "BadNote", str(error))
                continue
            log.info("job %s: note re-applied after full download", job["id"])

    def sync(self, full_upload=False):
        """Sync collection and media; False when there is no login to sync with.

        full_upload: the server's demand for a full sync is met by uploading this
        collection whole. Only for the sync right after a schema change that
        followed a sync, the sync lock held from before that sync (ankiconnect.schema).
        """
        settings, path = self.settings, self.db
        stored = session(settings)
        if not stored:
            return False
        began = time.time()
        options = dict(reapply=self.reapply,
                       io_timeout=_call_timeout(settings))
        try:
            with self.sync_lock:
                with self.lock:
                    col = self.collection()
                    before = duplicates.fingerprint(col)
                    outcome = ankiweb.sync(col, stored["hkey"], stored["endpoint"],
                                           wait_media=False, upload=full_upload, **options)
                # The media sync runs by itself: AnkiConnect may read meanwhile.
                ankiweb.wait_for_media(col, outcome["new_endpoint"] or stored["endpoint"],
                                       auth=outcome["auth"])
                with self.lock:
                    if outcome["outcome"] != "no_changes" and self.undouble(col):
                        ankiweb.sync(col, stored["hkey"], outcome["new_endpoint"]
                                     or stored["endpoint"], **options)  # the removals go up
        except Exception as error:
            db.set_state(path, last_sync_error=f"{type(error).__name__}: {error}",
                         last_sync_error_at=str(time.time()))
            if self.notifier is not None:
                self.notifier.sync_failed(error)
            raise
        del outcome["auth"]
        if outcome.get("new_endpoint"):
            credentials.update(config.credentials_path(settings),
                               sync={**stored, "endpoint": outcome["new_endpoint"]})
        self.pulled = True  # the collection holds what the server had
        jobs.mark_synced(path, began)
        db.set_state(path, last_sync_at=str(time.time()), last_sync_outcome=outcome["outcome"],
                     last_sync_error="")
        if self.notifier is not None:
            self.notifier.sync_done(outcome)
        log.info("synced (%s) in %.2fs", outcome["outcome"], time.time() - began)
        with self.lock:  # what the sync brought from other devices, for duplicate checks
            duplicates.after_sync(path, self.collection(), before, outcome["outcome"])
        return True
