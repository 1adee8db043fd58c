"""The Huey queue and its tasks: the worker's half of ankisync.

The web process imports this module to enqueue, so it must stay light: the
heavy modules (`worker`, which brings anki and google.cloud) are imported
inside the task bodies, which only ever run in the worker.

Huey is the transport, not the record: each task carries a job id, and the
job's fate is written to the job table. Huey's own results are not stored.
"""

import datetime
import functools
import json
import logging
import sqlite3
import sys
import time

from huey import SqliteHuey
from huey.exceptions import TaskTimeout
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage

import config
import db
import jobs
import tts
from errors import AnkisyncError, PermanentError, TransientError

log = logging.getLogger(__name__)

settings = config.current()
config.ensure_data_dir(settings)
DB = config.db_path(settings)

# Most jobs made in one task: their clips are spoken in parallel and their
# notes go up in one sync. Small enough to finish well within the task timeout.
BATCH = 50
PURGE_EVERY = 3600  # seconds between purges of old finished jobs, while busy
TIMEOUT_MESSAGE = ("the job took longer than {:g} s (ANKISYNC_TASK_TIMEOUT); retry it, or raise"
                   " the timeout if the sync server or text-to-speech is slow")
ADDED_TIMEOUT_MESSAGE = ("the job took longer than {:g} s (ANKISYNC_TASK_TIMEOUT) after its note"
                         " was added; its sync will be retried (raise the timeout if the sync"
                         " server is slow)")
# A job still `started` this long after it was claimed is no longer running
# (a timeout lands at the latest when a network call returns): the next batch
# takes it again.
STALE_AFTER = 2 * settings.task_timeout + 60
_last_purge = float("-inf")


class TaskTimedOut(PermanentError):
    """The job ran past ANKISYNC_TASK_TIMEOUT before its note was added."""
    kind = "TimeoutError"


class SyncTimedOut(TransientError):
    """The job ran past ANKISYNC_TASK_TIMEOUT after its note was added: sync again."""
    kind = "TimeoutError"


class WorkerTrouble(TransientError):
    """An OS or database error escaped the job (a full disk, a locked collection)."""


class JsonSerializer(Serializer):
    """Huey's task messages as JSON: nothing in the queue is pickled.

    Our tasks carry only job ids, so a message is plain data but for its
    datetimes; pipelines and chords, which would nest messages, are not used.
    """

    def _serialize(self, message):
        fields = message._asdict()
        if fields["on_complete"] or fields["on_error"] or fields["chord_config"]:
            raise ValueError("ankisync's queue carries no pipelines or chords")
        for name in ("eta", "expires_resolved"):
            if fields[name] is not None:
                fields[name] = fields[name].isoformat()
        return json.dumps(fields).encode()

    def _deserialize(self, data):
        fields = json.loads(data)
        for name in ("eta", "expires_resolved"):
            if fields[name] is not None:
                fields[name] = datetime.datetime.fromisoformat(fields[name])
        fields["args"] = tuple(fields["args"])
        return Message(**fields)


class Storage(SqliteStorage):
    """Huey's queue, left alone while the disk under the data dir is full (db.DiskGuard)."""

    def dequeue(self):
        if disk.full():
            return None
        try:
            return super().dequeue()
        except Exception as error:
            if not db.is_disk_full(error):
                raise
            disk.hit(error)

    def read_schedule(self, ts):
        return [] if db.disk_full(settings.data_dir) else super().read_schedule(ts)


disk = db.DiskGuard(settings.data_dir, on_room=lambda: recover())
huey = SqliteHuey("ankisync", filename=str(DB), results=False, utc=True, timeout=10,
                  serializer=JsonSerializer(), storage_class=Storage)


def unless_disk_full(task):
    """A task that ran out of disk leaves its jobs to recover(), run when there is room."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as error:
            if not db.is_disk_full(error):
                raise
            disk.hit(error)
    return run


def retry_delay(attempts):
    """Exponential backoff: the first delay, doubled per attempt, capped."""
    return min(settings.retry_delay * 2 ** (attempts - 1), settings.retry_max_delay)


@huey.task(timeout=settings.task_timeout, context=True)
@unless_disk_full
def make_card(job_id, task=None):
    """Make the job's card, and those of other waiting jobs with it."""
    batch = started(jobs.claim(DB, job_id, BATCH, STALE_AFTER))
    if not batch:
        log.debug("job %s: nothing to do (cancelled, finished or not due)", job_id)
        return

    def claim_more():
        """Jobs that came meanwhile join the batch (and its one sync)."""
        more = (started(jobs.claim(DB, None, BATCH - len(batch), STALE_AFTER))
                if len(batch) < BATCH else [])
        batch.extend(more)
        return more

    try:
        import worker
        outcomes = worker.make_cards(settings, batch, claim_more)
    except Exception as error:  # every claimed job still gets an outcome
        outcomes = dict.fromkeys((job["id"] for job in batch), error)
    # The alarm may land inside anki's code, which turns it into another error
    # (a TypeError): what the task's clock says decides.
    late = task is not None and task.is_timed_out
    cut = {job_id for job_id, error in outcomes.items() if error is not None and (
        caused_by(error, TaskTimeout) or late and not isinstance(error, AnkisyncError))}
    if cut:
        log.warning("%s jobs timed out after %ss (%s)", len(cut), settings.task_timeout,
                    ", ".join(sorted({type(outcomes[job_id]).__name__ for job_id in cut})))
        if "worker" in sys.modules:
            sys.modules["worker"].drop_collection()
        outcomes.update({job["id"]: timed_out(job) for job in batch if job["id"] in cut})
    for job in batch:
        try:
            settle(job, outcomes[job["id"]])
        except Exception as error:  # the job stays started till its deadline, then runs again
            if db.is_disk_full(error):  # one log line for the pause, none per job
                disk.hit(error)
                continue
            log.exception("job %s: could not record its outcome; it runs again later", job["id"])
    if time.monotonic() - _last_purge > PURGE_EVERY:
        purge_finished()


def timed_out(job):
    """The truth about a job its task's timeout cut short: synced, added, or not."""
    if (jobs.get(DB, job["id"]) or {}).get("added_at") is not None:
        return SyncTimedOut(ADDED_TIMEOUT_MESSAGE.format(settings.task_timeout))
    return TaskTimedOut(TIMEOUT_MESSAGE.format(settings.task_timeout))


def caused_by(error, kind):
    """Whether error was raised while handling (or from) an error of kind."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def expected(error):
    """The error as one of ours: an OS or database error that escaped a job is transient."""
    if isinstance(error, AnkisyncError) or not (
            isinstance(error, (OSError, sqlite3.Error))
            or type(error).__module__.split(".")[0] == "anki"):
        return error  # ours, or a bug (reported as InternalError)
    text = str(error)
    if "already open" in text:
        return WorkerTrouble(
            "the collection is open in another program (a second ankisync, or Anki, on"
            " this data dir?): stop it; the job will be retried")
    return WorkerTrouble(f"the worker could not use its files ({type(error).__name__}: "
                         f"{text}); the job will be retried; its log has the details")


def started(claimed):
    """Log the claimed jobs' start; returns them."""
    for job in claimed:
        log.info("job %s: started, attempt %s, %.2fs after it was accepted",
                 job["id"], job["attempts"], time.time() - job["created_at"])
    return claimed


def purge_finished():
    """Forget finished jobs older than ANKISYNC_RESULT_TTL (at start, then at most hourly)."""
    global _last_purge
    _last_purge = time.monotonic()
    count = jobs.purge(DB, settings.result_ttl)
    if count:
        log.info("purged %s finished jobs", count)


def settle(job, error):
    """The one place a run's outcome becomes the job's status: done, retry, or failed."""
    job_id, attempts = job["id"], job["attempts"]  # attempts counts this run
    if db.is_disk_full(error):  # not the job's fault: unless_disk_full takes it from here
        raise error
    error = expected(error)
    if error is not None and (jobs.get(DB, job_id) or {}).get("synced_at"):
        error = None  # the note reached the sync server before the error: a success
    kind = getattr(error, "kind", type(error).__name__)
    if error is None:
        jobs.mark_success(DB, job_id)
        log.info("job %s: done, %.2fs after it was accepted", job_id,
                 time.time() - job["created_at"])
    elif isinstance(error, TransientError) and attempts < settings.max_attempts:
        delay = retry_delay(attempts)
        log.info("job %s: attempt %s failed, retrying in %gs: %s", job_id, attempts, delay, error)
        jobs.mark_retrying(DB, job_id, kind, str(error), delay)
        make_card.schedule((job_id,), delay=delay, id=job_id)
    elif isinstance(error, TransientError):
        log.warning("job %s: giving up after %s attempts: %s", job_id, attempts, error)
        jobs.mark_failure(DB, job_id, kind,
                          f"{error} (gave up after {attempts} attempts)")
    elif isinstance(error, PermanentError):
        log.warning("job %s: failed: %s", job_id, error)
        jobs.mark_failure(DB, job_id, kind, str(error))
    else:
        log.error("job %s: unexpected error", job_id, exc_info=error)
        jobs.mark_failure(DB, job_id, "InternalError",
                          "the worker hit an unexpected error; its log has the details")


@huey.task(timeout=settings.task_timeout)
@unless_disk_full
def sync_now():
    """Sync the collection now (after a login: cards added before it go up)."""
    import worker
    try:
        worker.sync(settings)
    except AnkisyncError as error:
        log.warning("sync failed: %s", error)
    except Exception as error:
        if not caused_by(error, TaskTimeout):
            raise
        log.warning("sync timed out after %ss", settings.task_timeout)
        worker.drop_collection()


@huey.on_startup()
def recover_at_start():
    """A new worker (first start, or replacing one that died) first recovers lost jobs."""
    recover()
    purge_finished()


@huey.on_startup()
def start_ankiconnect():
    """Serve AnkiConnect from the worker process: the one that owns the collection."""
    if settings.ankiconnect_listen:
        import ankiconnect
        ankiconnect.start(settings)


@huey.on_shutdown()
def close_collection():
    """A worker stopping cleanly closes the collection it holds."""
    if "ankiconnect" in sys.modules:
        sys.modules["ankiconnect"].stop()
    worker = sys.modules.get("worker")
    if worker is not None:
        worker.close()


def enqueue(job_id):
    make_card(job_id, id=job_id)


def enqueue_in(conn, job_id):
    """Enqueue the job's task inside the caller's transaction on the shared file.

    What SqliteStorage.enqueue does, on our connection, so that the job row
    and its task commit together (one fsync, and never one without the other).
    """
    conn.execute("INSERT INTO task (queue, data, priority) VALUES (?, ?, 0)",
                 (huey.name, huey.serialize_task(make_card.s(job_id, id=job_id))))


def recover():
    """Enqueue again every unfinished job that Huey no longer holds.

    Huey deletes a task when it starts it, so a worker killed mid-job loses
    it; the job table still says the job is owed. Run when no job is running:
    at the start of each worker process (Huey starts a new one when one dies).
    No periodic task does this: an idle service must not write to its SD card.
    Clips a killed worker left half-written are removed first.
    """
    left = tts.clean_temporaries(config.media_dir(settings), tts.temp_dir(settings.data_dir))
    if left:
        log.info("removed %s clips left half-written", left)
    # None runs yet in this new worker: a started job was lost, and waits like a new one
    # (so that it joins a batch rather than syncing alone)
    jobs.requeue_started(DB)
    held = {task.id for task in huey.pending()} | {task.id for task in huey.scheduled()}
    lost = [job_id for job_id in jobs.unfinished(DB) if job_id not in held]
    for job_id in lost:
        enqueue(job_id)
    if lost:
        log.info("recovered %s unfinished jobs", len(lost))
    return lost
