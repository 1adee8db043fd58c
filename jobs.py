"""The job table: the source of truth for what happened to each accepted card.

Huey only carries job ids; a job's fate lives here, in the same SQLite file. A
row is written when the request is accepted (before the 202), then a few times
by the worker. Each write is one short transaction so Huey is never starved.
"""

import hashlib
import json
import time
import uuid

import db
import timings

SCHEMA = """
CREATE TABLE IF NOT EXISTS ankisync_jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'cloze', -- cloze (REST card), ankiconnect (a note added
                                        -- there) or deletion (notes deleted there)
    status TEXT NOT NULL,            -- pending, started, retrying, success, failure
    request TEXT NOT NULL,           -- the card's fields, JSON
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    step TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,                     -- JSON, set once the note is in the collection
    error TEXT,                      -- JSON {"type", "message"} of the last failure
    added_at REAL,                   -- when the note went into the local collection
    synced_at REAL,                  -- when a sync that carried the note succeeded
    retry_at REAL,                   -- a retrying job runs again from then; a started
                                     -- one that is still started then was lost
    idempotency_key TEXT,            -- the client's Idempotency-Key header
    request_hash TEXT,               -- what that key was first sent with
    voice TEXT,                      -- JSON [provider, voice] its clips were first spoken in
    deleted_at REAL,                 -- when an AnkiConnect client deleted its note: never re-added
    tts_seconds REAL,                -- how long speaking its batch took (timings.py)
    sync_seconds REAL                -- how long the sync that carried its note took
);
CREATE INDEX IF NOT EXISTS ankisync_jobs_status ON ankisync_jobs (status, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS ankisync_jobs_idempotency
    ON ankisync_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS ankisync_hourly ( -- what purged jobs counted, for the daily chart
    hour INTEGER PRIMARY KEY,        -- hours since the epoch (UTC) when they finished
    cards INTEGER NOT NULL,          -- successes
    failures INTEGER NOT NULL        -- failures, cancelled ones aside
);
"""

UNFINISHED = ("pending", "started", "retrying")
STATUSES = UNFINISHED + ("success", "failure")
# step name -> progress count; total is the last one
STEPS = {"queued": 0, "speaking": 1, "adding": 2, "syncing": 3, "done": 3}


ADDED_COLUMNS = {"voice": "TEXT", "deleted_at": "REAL", "tts_seconds": "REAL",
                 "sync_seconds": "REAL"}  # columns newer than some users' job tables


def init(path):
    conn = db.connect(path)
    conn.executescript(SCHEMA)
    conn.execute(db.STATE_SCHEMA)
    columns = "SELECT name FROM pragma_table_info('ankisync_jobs')"
    if set(ADDED_COLUMNS) - {row[0] for row in conn.execute(columns)}:
        with db.write(path) as writer:  # the web process and the worker may race here
            present = {row[0] for row in writer.execute(columns)}
            for name, kind in ADDED_COLUMNS.items():
                if name not in present:
                    writer.execute(f"ALTER TABLE ankisync_jobs ADD COLUMN {name} {kind}")


def new_id():
    return uuid.uuid4().hex


def is_id(text):
    """Whether text looks like one of our job ids (anything else is a 404)."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class KeyReused(Exception):
    """An Idempotency-Key already used with another request body."""


def create(path, request, idempotency_key=None, enqueue=None, check=None):
    """Store a new pending job, committed before the caller answers 202.

    Returns (job, created). With an idempotency key seen before, the job it
    made is returned instead (created False), unless the body differs.
    enqueue(conn, job_id) runs in the same transaction: the job and its task
    are written together, with one fsync shared by concurrent requests.
    check(conn), when given, runs first in that transaction and may refuse the
    job by raising (duplicates.refuse_held: no two jobs pass it at once).
    """
    body = json.dumps(request, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest() if idempotency_key else None

    def insert(conn):
        if idempotency_key:
            row = conn.execute("SELECT * FROM ankisync_jobs WHERE idempotency_key = ?",
                               (idempotency_key,)).fetchone()
            if row is not None:
                if row["request_hash"] != digest:
                    raise KeyReused(row["id"])
                return dict(row), False
        if check:
            check(conn)
        job = {"id": new_id(), "status": "pending", "request": body, "created_at": time.time(),
               "idempotency_key": idempotency_key, "request_hash": digest}
        conn.execute("INSERT INTO ankisync_jobs (id, status, request, created_at, idempotency_key,"
                     " request_hash) VALUES (:id, :status, :request, :created_at,"
                     " :idempotency_key, :request_hash)", job)
        if enqueue:
            enqueue(conn, job["id"])
        return job, True

    return db.group(path).run(insert)


def create_done(path, kind, request, result, job_id=None):
    """Record a note added at once (by AnkiConnect), so it is synced and re-applied like a card.

    job_id, when given, is the id the note's guid was derived from.
    """
    job_id, now = job_id or new_id(), time.time()
    with db.write(path) as conn:
        conn.execute(
            "INSERT INTO ankisync_jobs (id, kind, status, request, created_at, started_at,"
            " completed_at, step, attempts, result, added_at)"
            " VALUES (?, ?, 'success', ?, ?, ?, ?, 'done', 1, ?, ?)",
            (job_id, kind, json.dumps(request), now, now, now, json.dumps(result), now))
    return job_id


def get(path, job_id):
    row = db.connect(path).execute("SELECT * FROM ankisync_jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else dict(row)


def _update(path, job_id, sql, *args):
    with db.write(path) as conn:
        conn.execute(f"UPDATE ankisync_jobs SET {sql} WHERE id = ?", (*args, job_id))


def _update_if(path, job_id, statuses, sql, *args):
    """Update the job only while its status is one of statuses; whether it was."""
    marks = ", ".join("?" * len(statuses))
    with db.write(path) as conn:
        cursor = conn.execute(f"UPDATE ankisync_jobs SET {sql} WHERE id = ? AND status IN ({marks})",
                              (*args, job_id, *statuses))
    return cursor.rowcount == 1


# A retrying job due this soon joins a batch rather than waiting to sync alone
# (jobs that failed together are due within milliseconds of each other); a
# longer slack would cut their backoff short while new cards keep coming.
RETRY_SLACK = 1.0
# Others a batch takes: every waiting job, a retrying one nearly due, and one
# left started by a run that was lost (its deadline, in retry_at, has passed).
WAITING = ("(status = 'pending' OR status = 'retrying' AND retry_at <= :soon"
           " OR status = 'started' AND coalesce(retry_at, 0) <= :now)")


def claim(path, job_id, limit, stale_after):
    """Start the job and up to limit - 1 other waiting ones (oldest first), as one batch.

    The job itself may be pending, started (its run was lost) or retrying and
    due; the others may be pending, retrying and nearly due, or started and
    lost: a job still started stale_after seconds after it was claimed (the
    task timeout and a margin) is no longer running. Returns the started jobs,
    the given one first; empty when it was cancelled, finished or not yet due.
    With job_id None, only waiting jobs are claimed, up to limit.
    """
    now = time.time()
    marks = {"now": now, "soon": now + RETRY_SLACK, "deadline": now + stale_after}
    start = ("UPDATE ankisync_jobs SET status = 'started', attempts = attempts + 1,"
             " step = 'speaking', started_at = coalesce(started_at, :now),"
             " retry_at = :deadline WHERE id = :id AND ")
    with db.write(path) as conn:
        ids = []
        if job_id is not None:
            if not conn.execute(start + "(status IN ('pending', 'started')"
                                " OR status = 'retrying' AND retry_at <= :due)",
                                {**marks, "id": job_id, "due": now + 0.05}).rowcount:
                # Its own retry task comes at retry_at or after (Huey's clock is ours; 0.05 s
                # for rounding); a task of an earlier attempt of the batch, still scheduled,
                # comes earlier and must not start it before its backoff is over.
                return []
            ids.append(job_id)
        others = conn.execute(f"SELECT id FROM ankisync_jobs WHERE {WAITING}"
                              " ORDER BY created_at LIMIT :limit",
                              {**marks, "limit": limit - len(ids)}).fetchall()
        conn.executemany(start + WAITING, [{**marks, "id": row[0]} for row in others])
        ids += [row[0] for row in others]
        rows = {row["id"]: dict(row) for row in conn.execute(
            f"SELECT * FROM ankisync_jobs WHERE id IN ({', '.join('?' * len(ids))})", ids)}
    return [rows[i] for i in ids]


def pending_cards(path, limit):
    """{id: request} of up to limit cards waiting for their first run, oldest first."""
    rows = db.connect(path).execute(
        "SELECT id, request FROM ankisync_jobs WHERE status = 'pending' AND kind = 'cloze'"
        " ORDER BY created_at LIMIT ?", (limit,)).fetchall()
    return {row[0]: json.loads(row[1]) for row in rows}


def cancel(path, job_id):
    """Cancel a job that is not running and whose note is not added; False otherwise."""
    with db.write(path) as conn:
        cursor = conn.execute(
            "UPDATE ankisync_jobs SET status = 'failure', error = ?, completed_at = ?"
            " WHERE id = ? AND status IN ('pending', 'retrying') AND added_at IS NULL",
            (json.dumps({"type": "Cancelled", "message": "cancelled by a client;"
                         " POST /api/v1/tasks/<id>/retry runs it again"}), time.time(), job_id))
    return cursor.rowcount == 1


def requeue_started(path):
    """Make pending again the jobs left started (at worker start, none is running)."""
    with db.write(path) as conn:
        return conn.execute("UPDATE ankisync_jobs SET status = 'pending', step = 'queued'"
                            " WHERE status = 'started'").rowcount


def stuck(path):
    """How many jobs are started past their deadline: their run was lost."""
    return db.connect(path).execute(
        "SELECT count(*) FROM ankisync_jobs WHERE status = 'started'"
        " AND coalesce(retry_at, 0) < ?", (time.time(),)).fetchone()[0]


def fix_voices(path, voices):
    """Give each job its voice ({job id: [provider, {...}]}) unless it has one; {job id:
    its voice}.

    A job keeps the voice it was first spoken in, so that a re-run after a
    change of ANKISYNC_TTS_VOICE reuses the clips already paid for.
    """
    marks = ", ".join("?" * len(voices))
    with db.write(path) as conn:
        conn.executemany("UPDATE ankisync_jobs SET voice = ? WHERE voice IS NULL AND id = ?",
                         [(json.dumps(voice), job_id) for job_id, voice in voices.items()])
        rows = conn.execute(f"SELECT id, voice FROM ankisync_jobs WHERE id IN ({marks})",
                            list(voices)).fetchall()
    return {row[0]: json.loads(row[1]) for row in rows}


def reopen(path, job_id):
    """Make a failed job pending again, for a person's retry; False if it had not failed.

    The failure it ended in stays counted in the job-duration histogram (kept with the
    purged totals: a histogram only grows, or Prometheus reads a reset)."""
    with db.write(path) as conn:
        timings.fold(conn, "id = ? AND status = 'failure'", (job_id,), names=("job",))
        cursor = conn.execute(
            "UPDATE ankisync_jobs SET status = 'pending', step = 'queued', attempts = 0,"
            " error = NULL, completed_at = NULL WHERE id = ? AND status = 'failure'", (job_id,))
    return cursor.rowcount == 1


def recent(path, status=None, limit=20, before=None):
    """Jobs newest first, optionally of one status, older than the job `before`."""
    # (an AnkiConnect deletion's record is no job a person asked for: not listed)
    sql, args = "SELECT * FROM ankisync_jobs WHERE kind != 'deletion'", []
    if status:
        sql += " AND status = ?"
        args.append(status)
    if before:
        sql += " AND (created_at, id) < (SELECT created_at, id FROM ankisync_jobs WHERE id = ?)"
        args.append(before)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    rows = db.connect(path).execute(sql, (*args, limit)).fetchall()
    return [dict(row) for row in rows]


def set_step(path, job_ids, step):
    with db.write(path) as conn:
        conn.executemany("UPDATE ankisync_jobs SET step = ? WHERE id = ?",
                         [(step, job_id) for job_id in job_ids])


def mark_spoken(path, seconds):
    """How long speaking took, {job id: seconds}: one write for a batch (timings.py)."""
    if not seconds:
        return
    with db.write(path) as conn:
        conn.executemany("UPDATE ankisync_jobs SET tts_seconds = ? WHERE id = ?",
                         [(took, job_id) for job_id, took in seconds.items()])


def mark_added(path, job_id, result):
    """The note is in the local collection; result holds its ids and clips."""
    _update(path, job_id, "result = ?, added_at = coalesce(added_at, ?)",
            json.dumps(result), time.time())


def mark_retrying(path, job_id, error_type, message, delay):
    _update(path, job_id, "status = 'retrying', error = ?, retry_at = ?",
            json.dumps({"type": error_type, "message": message}), time.time() + delay)


def mark_success(path, job_id):
    _update(path, job_id, "status = 'success', step = 'done', error = NULL, completed_at = ?",
            time.time())


def mark_failure(path, job_id, error_type, message):
    _update(path, job_id, "status = 'failure', error = ?, completed_at = ?",
            json.dumps({"type": error_type, "message": message}), time.time())


def mark_synced(path, since):
    """Record that every note added before `since` is now on the sync server.

    A job that failed only because its sync failed is a success once its note
    is there: the card reached AnkiWeb after all.
    """
    now = time.time()
    with db.write(path) as conn:
        conn.execute(
            "UPDATE ankisync_jobs SET synced_at = ?, sync_seconds = ?,"
            " status = CASE status WHEN 'failure' THEN 'success' ELSE status END,"
            " error = CASE status WHEN 'failure' THEN NULL ELSE error END"
            " WHERE added_at IS NOT NULL AND added_at <= ? AND synced_at IS NULL",
            (now, now - since, since),
        )


def unfinished(path):
    """Ids of jobs the worker still owes an outcome, oldest first."""
    rows = db.connect(path).execute(
        "SELECT id FROM ankisync_jobs WHERE status IN (?, ?, ?) ORDER BY created_at", UNFINISHED)
    return [row[0] for row in rows]


def added(path):
    """Jobs whose note went into the collection, for re-applying after a download."""
    rows = db.connect(path).execute(
        "SELECT * FROM ankisync_jobs WHERE added_at IS NOT NULL AND deleted_at IS NULL"
        " ORDER BY added_at")
    return [dict(row) for row in rows]


def mark_deleted(path, job_ids):
    """Record that these jobs' notes were deleted on purpose: a full download must not re-add them."""
    with db.write(path) as conn:
        conn.executemany("UPDATE ankisync_jobs SET deleted_at = ? WHERE id = ?",
                         [(time.time(), job_id) for job_id in job_ids])


def unfinished_count(path):
    """How many jobs the worker still owes: read from the status index, not a table scan
    (it runs on every card posted)."""
    return db.connect(path).execute(
        "SELECT count(*) FROM ankisync_jobs WHERE status IN (?, ?, ?)", UNFINISHED).fetchone()[0]


def counts(path, since=0):
    """Number of jobs by status: all unfinished ones, and those finished since `since`."""
    rows = db.connect(path).execute(
        "SELECT status, count(*) FROM ankisync_jobs WHERE completed_at IS NULL"
        " OR completed_at >= ? GROUP BY status", (since,))
    return dict(rows.fetchall())


def purge(path, ttl):
    """Forget finished jobs older than ttl seconds.

    A note not yet synced keeps its job: it is what re-applies the note if a
    full download ever replaces the local collection.
    """
    forgotten = ("completed_at < ? AND (status = 'failure' AND added_at IS NULL"
                 " OR synced_at IS NOT NULL)")
    cutoff = time.time() - ttl
    with db.write(path) as conn:
        fold_into_hours(conn, forgotten, cutoff)  # the chart keeps counting them
        timings.fold(conn, forgotten, (cutoff,))  # the histograms keep them
        cursor = conn.execute(f"DELETE FROM ankisync_jobs WHERE {forgotten}", (cutoff,))
    return cursor.rowcount


def iso(timestamp):
    """ISO 8601 UTC, as clients expect: 2026-01-03T10:30:00Z."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def summary(job):
    """What the job was asked to make, for a person's list: its kind, word and sentence."""
    request = json.loads(job["request"])
    if job["kind"] == "cloze":
        return {"kind": "cloze", "word": request.get("word", ""),
                "sentence": request.get("englishExample", "")}
    values = [value for value in request.get("fields", {}).values() if isinstance(value, str)]
    return {"kind": job["kind"], "word": values[0] if values else "",
            "sentence": values[1] if len(values) > 1 else ""}


def status_body(job):
    """The job as the HTTP API shows it."""
    result = json.loads(job["result"]) if job["result"] else None
    if result is not None and job["status"] == "success":
        result["synced"] = job["synced_at"] is not None
        result["syncedAt"] = iso(job["synced_at"])
    return {
        "taskId": job["id"],
        "status": job["status"],
        "createdAt": iso(job["created_at"]),
        "startedAt": iso(job["started_at"]),
        "completedAt": iso(job["completed_at"]),
        "progress": {"current": STEPS[job["step"]], "total": STEPS["done"], "step": job["step"]},
        "attempts": job["attempts"],
        "result": result if job["status"] == "success" else None,
        "error": json.loads(job["error"]) if job["error"] else None,
    }


# A failed job counts as a failure in the chart unless a client cancelled it (see cancel).
FAILED = "status = 'failure' AND coalesce(error, '') NOT LIKE '{\"type\": \"Cancelled\"%'"
KEEP_HOURS = 400 * 24  # purged jobs' counts older than this are dropped


def fold_into_hours(conn, where, *args):
    """Add the finished jobs matching `where` to the hourly counts (before they are purged)."""
    conn.execute(
        "INSERT INTO ankisync_hourly (hour, cards, failures)"
        f" SELECT CAST(completed_at / 3600 AS INTEGER) AS h, sum(status = 'success'),"
        f" sum({FAILED}) FROM ankisync_jobs WHERE ({where}) AND kind != 'deletion' GROUP BY h"
        " ON CONFLICT (hour) DO UPDATE SET cards = cards + excluded.cards,"
        " failures = failures + excluded.failures", args)
    conn.execute("DELETE FROM ankisync_hourly WHERE hour < ?",
                 (int(time.time() // 3600) - KEEP_HOURS,))


def daily(path, days, offset, now=None):
    """Cards made and jobs failed on each of the last `days` days, oldest first.

    Days are local to a clock `offset` seconds east of UTC. Jobs still in the
    table are counted exactly; purged ones by the hour they finished in.
    """
    now = time.time() if now is None else now
    first = ((now + offset) // 86400 - days + 1) * 86400 - offset  # UTC start of day one
    counts = [[0, 0] for _ in range(days)]
    conn = db.connect(path)
    live = conn.execute(
        f"SELECT CAST((completed_at - :first) / 86400 AS INTEGER) AS day,"
        f" sum(status = 'success'), sum({FAILED}) FROM ankisync_jobs"
        " WHERE completed_at >= :first AND kind != 'deletion' GROUP BY day", {"first": first})
    purged = conn.execute(
        "SELECT CAST((hour * 3600 - :first) / 86400 AS INTEGER) AS day, sum(cards),"
        " sum(failures) FROM ankisync_hourly WHERE hour >= CAST(:first / 3600 AS INTEGER)"
        " GROUP BY day",
        {"first": first})
    for day, cards, failures in [*live, *purged]:
        if 0 <= day < days:
            counts[day][0] += cards
            counts[day][1] += failures
    return [{"date": time.strftime("%Y-%m-%d", time.gmtime(first + offset + 86400 * day)),
             "cards": cards, "failures": failures}
            for day, (cards, failures) in enumerate(counts)]
