"""The Huey queue and its tasks: the worker's half of ankisync.

The web process imports this module to enqueue, so it must stay light: the
heavy modules (`worker`, which brings anki and google.cloud) are imported
inside the task bodies, which only ever run in the worker.

Huey is the transport, not the record: each task carries a job id, and the
job's fate is written to the job table. Huey's own results are not stored.
"""

import logging

from huey import SqliteHuey, crontab
from huey.exceptions import RetryTask, TaskTimeout

import config
import jobs
from errors import AnkisyncError, PermanentError, TransientError

log = logging.getLogger(__name__)

settings = config.current()
config.ensure_data_dir(settings)
DB = config.db_path(settings)

huey = SqliteHuey("ankisync", filename=str(DB), results=False, utc=True, timeout=10)


def retry_delay(attempts):
    """Exponential backoff: the first delay, doubled per attempt, capped."""
    return min(settings.retry_delay * 2 ** (attempts - 1), settings.retry_max_delay)


@huey.task(timeout=settings.task_timeout)
def make_card(job_id):
    """Speak, add the note, sync: one card job, with the worker's error boundary."""
    job = jobs.get(DB, job_id)
    if job is None or job["status"] not in jobs.UNFINISHED:
        log.info("job %s: nothing to do (%s)", job_id, job and job["status"] or "gone")
        return
    jobs.mark_started(DB, job_id)
    attempts = job["attempts"] + 1
    try:
        import worker
        worker.make_card(settings, job)
    except TaskTimeout:
        log.warning("job %s: timed out after %ss", job_id, settings.task_timeout)
        jobs.mark_failure(DB, job_id, "TimeoutError",
                          f"the job took longer than {settings.task_timeout:g} s"
                          " (ANKISYNC_TASK_TIMEOUT); retry it, or raise the timeout"
                          " if the sync server or text-to-speech is slow")
    except TransientError as error:
        if attempts >= settings.max_attempts:
            log.warning("job %s: giving up after %s attempts: %s", job_id, attempts, error)
            jobs.mark_failure(DB, job_id, type(error).__name__,
                              f"{error} (gave up after {attempts} attempts)")
            return
        delay = retry_delay(attempts)
        log.info("job %s: attempt %s failed, retrying in %gs: %s", job_id, attempts, delay, error)
        jobs.mark_retrying(DB, job_id, type(error).__name__, str(error))
        raise RetryTask(delay=delay) from None
    except PermanentError as error:
        log.warning("job %s: failed: %s", job_id, error)
        jobs.mark_failure(DB, job_id, type(error).__name__, str(error))
    except Exception:
        log.exception("job %s: unexpected error", job_id)
        jobs.mark_failure(DB, job_id, "InternalError",
                          "the worker hit an unexpected error; its log has the details")
    else:
        jobs.mark_success(DB, job_id)
        log.info("job %s: done", job_id)


@huey.task(timeout=settings.task_timeout)
def sync_now():
    """Sync the collection now (after a login: cards added before it go up)."""
    import worker
    try:
        worker.sync(settings)
    except AnkisyncError as error:
        log.warning("sync failed: %s", error)


@huey.periodic_task(crontab(minute="*/10"))
def purge_finished():
    """Forget finished jobs older than ANKISYNC_RESULT_TTL."""
    count = jobs.purge(DB, settings.result_ttl)
    if count:
        log.info("purged %s finished jobs", count)


@huey.on_startup()
def start_ankiconnect():
    """Serve AnkiConnect from the worker process: the one that owns the collection."""
    if settings.ankiconnect_listen:
        import ankiconnect
        ankiconnect.start(settings)


def enqueue(job_id):
    make_card(job_id, id=job_id)


def recover():
    """Enqueue again every unfinished job that Huey no longer holds.

    Huey deletes a task when it starts it, so a worker killed mid-job loses
    it; the job table still says the job is owed. Called at worker start,
    when nothing is running.
    """
    held = {task.id for task in huey.pending()} | {task.id for task in huey.scheduled()}
    lost = [job_id for job_id in jobs.unfinished(DB) if job_id not in held]
    for job_id in lost:
        enqueue(job_id)
    if lost:
        log.info("recovered %s unfinished jobs", len(lost))
    return lost
