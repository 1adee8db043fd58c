"""The Huey queue and its tasks: the worker's half of ankisync.

The web process imports this module to enqueue, so it stays light and writes
nothing when imported: `init(settings)` points the queue at the data dir and
makes Huey's tables, at each process's start. The worker-only modules
(`worker`, `ankiconnect`: they bring anki) are imported by the worker's
start-up hook, which makes the process's one `worker.Worker` and hands it to
the tasks and to the AnkiConnect server.

Huey is the transport, not the record: each task carries a job id, and the
job's fate is written to the job table. Huey's own results are not stored.
"""

import datetime
import functools
import json
import logging
import pathlib
import sqlite3
import threading
import time

from huey import SqliteHuey
from huey.exceptions import TaskTimeout
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage

import backup
import config
import consumer
import db
import duplicates
import jobs
import notify
import tts
import wakeup
from errors import (AnkisyncError, PermanentError, SyncTimedOut, TaskTimedOut,
                    TransientError, WorkerTrouble)

log = logging.getLogger(__name__)

# Most jobs made in one task: their clips are spoken in parallel and their
# notes go up in one sync. Small enough to finish well within the task timeout.
BATCH = 50
PURGE_EVERY = 3600  # seconds between purges of old finished jobs, while busy
TIMEOUT_MESSAGE = ("the job took longer than {:g} s (ANKISYNC_TASK_TIMEOUT); retry it, or raise"
                   " the timeout if the sync server or text-to-speech is slow")
ADDED_TIMEOUT_MESSAGE = ("the job took longer than {:g} s (ANKISYNC_TASK_TIMEOUT) after its note"
                         " was added; its sync will be retried (raise the timeout if the sync"
                         " server is slow)")


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
    """Huey's queue, left alone while the disk under the data dir is full (db.DiskGuard).

    Each task queued nudges the worker (wakeup.py). The worker's queue waits for
    a nudge when empty (blocking: Huey then adds no sleep of its own).
    """

    disk = None  # the guard, given by init()
    wakeup_path = None  # where the worker listens, given by init()
    listener = None  # the worker's wakeup.Listener (start_worker), if it could make one

    @property
    def blocking(self):
        return self.listener is not None

    def enqueue(self, data, priority=None):
        super().enqueue(data, priority)
        nudge()  # a retry the scheduler moved here, a sync queued by AnkiConnect

    def dequeue(self):
        task = self._dequeue()
        if task is None and self.listener is not None and self.listener.wait():
            task = self._dequeue()
        return task

    def _dequeue(self):
        if self.disk.full():
            return None
        try:
            return super().dequeue()
        except Exception as error:
            if not db.is_disk_full(error):
                raise
            self.disk.hit(error)

    def read_schedule(self, ts):
        return [] if db.disk_full(self.disk.path) else super().read_schedule(ts)


class Queue(SqliteHuey):
    """The queue app of a process: Huey, with what init() and the start-up hook give it.

    settings: this process's, read once at its start (init). worker: the
    worker process's one worker.Worker, made by the start-up hook. ankiconnect:
    its AnkiConnect server, if it serves one. last_purge: when finished jobs
    were last purged.
    """

    settings = worker = ankiconnect = notifier = None
    last_purge = float("-inf")
    backups = None  # the scheduled backups' stop switch (backup.start_schedule)


# The file is set by init(): importing this module touches no disk.
huey = Queue("ankisync", filename=None, results=False, utc=True, timeout=10,
             serializer=JsonSerializer(), storage_class=Storage, create_tables=False)


def init(settings):
    """Point the queue at the data dir's file and make its tables (each process, at start)."""
    config.ensure_data_dir(settings)
    huey.settings = settings
    huey.storage.filename = str(config.db_path(settings))
    huey.storage.disk = db.DiskGuard(settings.data_dir, on_room=recover)
    huey.storage.wakeup_path = config.wakeup_path(settings)
    for task in (make_card, sync_now, periodic_sync):
        task.task_class.default_timeout = settings.task_timeout
    huey.storage.initialize_schema()


def run_consumer(settings):
    """Run the worker: one process worker, until a signal stops it."""
    # One process worker: Huey enforces task timeouts only in process workers,
    # and a single writer is what the Anki collection allows. SIGTERM lets the
    # running job finish (bounded); SIGINT stops at once. Either way a job left
    # unfinished is recovered at the next start.
    # Its main process reads the schedule itself (consumer.py): no scheduler process.
    running = consumer.Consumer(
        huey, workers=1, worker_type="process", initial_delay=0.05, backoff=1.15,
        max_delay=0.1, check_worker_health=True, health_check_interval=1,
        graceful_signal="TERM", shutdown_timeout=30)
    log.info("worker running (one process worker, task timeout %gs)", settings.task_timeout)
    running.run()


def _db():
    return config.db_path(huey.settings)


def _stale_after():
    # A job still `started` this long after it was claimed is no longer running
    # (a timeout lands at the latest when a network call returns): the next batch
    # takes it again.
    return 2 * huey.settings.task_timeout + 60


def unless_disk_full(task):
    """A task that ran out of disk leaves its jobs to recover(), run when there is room."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as error:
            if not db.is_disk_full(error):
                raise
            huey.storage.disk.hit(error)
    return run


def retry_delay(attempts):
    """Exponential backoff: the first delay, doubled per attempt, capped."""
    settings = huey.settings
    return min(settings.retry_delay * 2 ** (attempts - 1), settings.retry_max_delay)


@huey.task(context=True)  # its timeout is set by init()
@unless_disk_full
def make_card(job_id, task=None):
    """Make the job's card, and those of other waiting jobs with it."""
    batch = started(jobs.claim(_db(), job_id, BATCH, _stale_after()))
    if not batch:
        wait_for_retry(job_id)
        return
    # If this run is lost (the worker dies, or a write fails), nothing else would
    # take its jobs before the next card or start: a guard run at their deadline
    # does (it finds them finished, and does nothing, in the usual case).
    make_card.schedule((job_id,), delay=_stale_after(), id=f"guard-{job_id}")

    def claim_more():
        """Jobs that came meanwhile join the batch (and its one sync)."""
        more = (started(jobs.claim(_db(), None, BATCH - len(batch), _stale_after()))
                if len(batch) < BATCH else [])
        batch.extend(more)
        return more

    try:
        outcomes = huey.worker.make_cards(batch, claim_more, ahead=BATCH)
    except Exception as error:  # every claimed job still gets an outcome
        outcomes = dict.fromkeys((job["id"] for job in batch), error)
    # The alarm may land inside anki's code, which turns it into another error
    # (a TypeError): what the task's clock says decides.
    late = task is not None and task.is_timed_out
    cut = {job_id for job_id, error in outcomes.items() if error is not None and (
        caused_by(error, TaskTimeout) or late and not isinstance(error, AnkisyncError))}
    if cut:
        log.warning("%s jobs timed out after %ss (%s)", len(cut), huey.settings.task_timeout,
                    ", ".join(sorted({type(outcomes[job_id]).__name__ for job_id in cut})))
        huey.worker.drop_collection()
        outcomes.update({job["id"]: timed_out(job) for job in batch if job["id"] in cut})
    for job in batch:
        try:
            settle(job, outcomes[job["id"]])
        except Exception as error:  # the job stays started till its deadline, then runs again
            if db.is_disk_full(error):  # one log line for the pause, none per job
                huey.storage.disk.hit(error)
                continue
            log.exception("job %s: could not record its outcome; it runs again later", job["id"])
    if time.monotonic() - huey.last_purge > PURGE_EVERY:
        purge_finished()


def wait_for_retry(job_id):
    """A task that came early for a retrying job (a recovery, a guard) waits for its time,
    unless Huey already holds the job's retry: the job's retry is never lost."""
    job = jobs.get(_db(), job_id)
    if job is None or job["status"] != "retrying" or not job["retry_at"]:
        log.debug("job %s: nothing to do (cancelled, finished or running)", job_id)
        return
    if any(task.id == job_id for task in huey.scheduled()):
        return
    make_card.schedule((job_id,), delay=max(0.0, job["retry_at"] - time.time()), id=job_id)


def timed_out(job):
    """The truth about a job its task's timeout cut short: synced, added, or not."""
    timeout = huey.settings.task_timeout
    if (jobs.get(_db(), job["id"]) or {}).get("added_at") is not None:
        return SyncTimedOut(ADDED_TIMEOUT_MESSAGE.format(timeout))
    return TaskTimedOut(TIMEOUT_MESSAGE.format(timeout))


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
    huey.last_purge = time.monotonic()
    count = jobs.purge(_db(), huey.settings.result_ttl)
    if count:
        log.info("purged %s finished jobs", count)


def settle(job, error):
    """The one place a run's outcome becomes the job's status: done, retry, or failed."""
    job_id, attempts = job["id"], job["attempts"]  # attempts counts this run
    path = _db()
    if db.is_disk_full(error):  # not the job's fault: unless_disk_full takes it from here
        raise error
    error = expected(error)
    if error is not None and (jobs.get(path, job_id) or {}).get("synced_at"):
        error = None  # the note reached the sync server before the error: a success
    kind = getattr(error, "kind", type(error).__name__)
    if error is None:
        jobs.mark_success(path, job_id)
        log.info("job %s: done, %.2fs after it was accepted", job_id,
                 time.time() - job["created_at"])
    elif isinstance(error, TransientError) and attempts < huey.settings.max_attempts:
        delay = retry_delay(attempts)
        log.info("job %s: attempt %s failed, retrying in %gs: %s", job_id, attempts, delay, error)
        jobs.mark_retrying(path, job_id, kind, str(error), delay)
        make_card.schedule((job_id,), delay=delay, id=job_id)
    elif isinstance(error, TransientError):
        log.warning("job %s: giving up after %s attempts: %s", job_id, attempts, error)
        failed(job, kind, f"{error} (gave up after {attempts} attempts)")
    elif isinstance(error, PermanentError):
        log.warning("job %s: failed: %s", job_id, error)
        failed(job, kind, str(error))
    else:
        log.error("job %s: unexpected error", job_id, exc_info=error)
        failed(job, "InternalError", "the worker hit an unexpected error; its log has the details")


def failed(job, error_type, message):
    """The job failed for good: recorded, then the user alerted (notify.py; never waited for)."""
    jobs.mark_failure(_db(), job["id"], error_type, message)
    if huey.notifier is not None:
        huey.notifier.job_failed(job, error_type, message)


@huey.task()  # its timeout is set by init()
@unless_disk_full
def sync_now():
    """Sync the collection now (after a login: cards added before it go up)."""
    try:
        huey.worker.sync()
    except AnkisyncError as error:
        log.warning("sync failed: %s", error)
    except Exception as error:
        if not caused_by(error, TaskTimeout):
            raise
        log.warning("sync timed out after %ss", huey.settings.task_timeout)
        huey.worker.drop_collection()


PERIODIC_SYNC = "periodic-sync"  # the id of the one periodic sync waiting in Huey's schedule


@huey.task()  # its timeout is set by init()
def periodic_sync():
    """Pull what other devices synced (ANKISYNC_SYNC_INTERVAL), then come again after it.

    So AnkiConnect's duplicate checks see the cards added on the phone. One such
    task waits in Huey's schedule at a time, under a fixed id: made at the worker's
    start, then by each run. With the setting off none is ever made, and an idle
    service writes nothing.
    """
    if not huey.settings.sync_interval:  # turned off since it was scheduled
        return
    try:
        sync_now.call_local()
    finally:
        schedule_periodic_sync()


def schedule_periodic_sync():
    """Schedule the next periodic sync, unless the setting is off or one is waiting."""
    interval = huey.settings.sync_interval
    if not interval:
        return
    if any(task.id == PERIODIC_SYNC for task in huey.scheduled() + huey.pending()):
        return  # a restarted worker finds the one an earlier worker scheduled
    periodic_sync.schedule(delay=interval, id=PERIODIC_SYNC)


@huey.on_startup()
def start_worker():
    """A new worker process makes its Worker, recovers lost jobs, serves AnkiConnect.

    Run in each worker process Huey starts (first start, or replacing one
    that died), after init() in the process that forked it.
    """
    import ankiconnect  # worker-only, as worker: they bring anki
    import worker
    huey.notifier = notify.Notifier(huey.settings)
    huey.worker = worker.Worker(huey.settings, reappliers={"ankiconnect": ankiconnect.readd,
                                                              "deletion": ankiconnect.readd},
                                notifier=huey.notifier)
    huey.storage.listener = wakeup.listen(huey.storage.wakeup_path)
    recover()
    purge_finished()
    if duplicates.stale(_db()) and config.collection_path(huey.settings).exists():
        huey.worker.collection()  # opening it indexes it (first start with the index, or an
        # AnkiConnect change not yet synced)
    schedule_periodic_sync()
    threading.Thread(target=huey.worker.warm_up, name="warm-up", daemon=True).start()
    if huey.settings.ankiconnect_listen:
        # Served from the worker process: the one that owns the collection.
        huey.ankiconnect = ankiconnect.start(huey.worker, queue_sync)
    if huey.settings.backup_interval:
        huey.backups = backup.start_schedule(huey.worker, huey.settings)


@huey.on_shutdown()
def close_collection():
    """A worker stopping cleanly stops AnkiConnect, then closes the collection it holds."""
    if huey.ankiconnect is not None:
        huey.ankiconnect.stop()
        huey.ankiconnect = None
    if huey.backups is not None:
        huey.backups.set()
    if huey.worker is not None:
        huey.worker.close()
    if huey.notifier is not None:
        huey.notifier.close()
    if huey.storage.listener is not None:
        huey.storage.listener.close()
        huey.storage.listener = None


@huey.task(priority=10, timeout=3600)  # first in line; a big collection on a Pi takes a while
def backup_now(folder, request):
    """A backup for `./run.sh backup`, which waits for the answer in the job database."""
    try:
        answer = {"backup": backup.take_in_worker(huey.worker, pathlib.Path(folder),
                                                  huey.settings.backup_keep)}
    except Exception as error:
        log.warning("backup into %s failed: %s", folder, error,
                    exc_info=not isinstance(error, AnkisyncError))
        answer = {"error": backup.describe_error(error)}
    backup.answer(_db(), request, answer)


def ask_backup(folder, request, expires):
    backup_now(folder, request, expires=expires)


def queue_sync():
    """Queue one sync unless one is already waiting to run (AnkiConnect's adds).

    A queued sync that has not started yet will carry the new note too: it
    takes the collection lock, which the add held. So many adds make one sync.
    """
    # (sync_now.name is None: Huey names the task class, so compare classes)
    if not any(isinstance(task, sync_now.task_class) for task in huey.pending()):
        sync_now()


def enqueue(job_id):
    make_card(job_id, id=job_id)


def nudge():
    """Wake the worker for a task just queued (committed: it must find it)."""
    wakeup.nudge(huey.storage.wakeup_path)


def enqueue_in(conn, job_id):
    """Enqueue the job's task inside the caller's transaction on the shared file.

    What SqliteStorage.enqueue does, on our connection, so that the job row
    and its task commit together (one fsync, and never one without the other).
    The caller nudges the worker once that is committed.
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
    settings, path = huey.settings, _db()
    left = tts.clean_temporaries(config.media_dir(settings), tts.temp_dir(settings.data_dir))
    if left:
        log.info("removed %s clips left half-written", left)
    # None runs yet in this new worker: a started job was lost, and waits like a new one
    # (so that it joins a batch rather than syncing alone)
    jobs.requeue_started(path)
    held = {task.id for task in huey.pending()} | {task.id for task in huey.scheduled()}
    lost = [job_id for job_id in jobs.unfinished(path) if job_id not in held]
    for job_id in lost:
        enqueue(job_id)
    if lost:
        log.info("recovered %s unfinished jobs", len(lost))
    return lost
