"""The service at a glance, for GET /api/v1/health and `./run.sh status`.

Read from the data dir only (job table, state, credentials, the worker's pid
file), so the web process and the command line give the same answer.
"""

import json
import time

import config
import credentials
import db
import jobs
import tts
from version import __version__


def worker_pid(current):
    """The worker's pid if it is running, else None (read from its pid file)."""
    try:
        pid = int(config.worker_pid_path(current).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:  # not a reused pid
            return pid if b"worker" in cmdline.read().split(b"\0") else None
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def service_status(current):
    """What a self-hoster needs to know: for /health and the status command."""
    path = config.db_path(current)
    stored = credentials.load(config.credentials_path(current))
    all_jobs, last_day = jobs.counts(path), jobs.counts(path, since=time.time() - 86400)
    pid = worker_pid(current)
    connect = ankiconnect_status(current, pid)
    full = db.disk_full(current.data_dir)
    stuck = jobs.stuck(path)
    problems = problems_of(current, full, connect, stuck)
    return {
        "status": "disk full" if full else "ok" if pid and not problems else "degraded",
        "version": __version__,
        "problems": problems,
        "worker": {"alive": bool(pid), "pid": pid, "ready": worker_ready(path, pid)},
        "ankiconnect": connect,
        "disk": {"full": full, "freeBytes": db.free_bytes(current.data_dir),
                 "message": db.disk_full_message(current.data_dir) if full else None},
        "queue": {status: all_jobs.get(status, 0) for status in jobs.UNFINISHED},
        "jobs": all_jobs,
        "stuckJobs": stuck,  # started, but past their deadline: run again later
        "last24h": {status: last_day.get(status, 0) for status in ("success", "failure")},
        "sync": sync_status(current, stored),
        "tts": tts.choose(current.tts, current.google_api_key
                          or stored.get("google_api_key")) or "none",
        "voice": voice_in_use(current, stored),
    }


def worker_ready(path, pid):
    """Whether the worker process of the consumer pid has warmed up (Worker.warm_up):
    its voice's client built, the collection open, the first sync tried."""
    consumer, _, child = (db.get_state(path, "worker_ready") or "").partition(":")
    if pid is None or consumer != str(pid) or not child.isdigit():
        return False
    try:  # that process still runs (Huey replaces a worker that died), a child of pid
        with open(f"/proc/{child}/stat") as stat:
            state, parent = stat.read().rsplit(")", 1)[1].split()[:2]
        return state not in "ZX" and parent == str(pid)  # not killed and not yet reaped
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def voice_in_use(current, stored):
    """The voice new cards are spoken in, or None when they get no audio."""
    provider = tts.choose(current.tts, current.google_api_key or stored.get("google_api_key"))
    return None if provider is None else tts.voice_for(provider, current).name


def ankiconnect_status(current, pid):
    """The AnkiConnect server as the running worker (pid) found it at its start."""
    connect = {"state": "off", "listen": None, "problem": None,
               "keyRequired": bool(current.ankiconnect_key)}
    if not current.ankiconnect_listen:
        return connect
    host, port = current.ankiconnect_listen
    recorded = json.loads(db.get_state(config.db_path(current), "ankiconnect") or "{}")
    # a state left by an earlier worker (another pid) says nothing about this one
    fresh = pid is not None and recorded.get("worker") == pid
    connect.update(listen=f"{host}:{port}", problem=recorded.get("problem") if fresh else None,
                   state=recorded["state"] if fresh else "starting" if pid else "stopped")
    return connect


def problems_of(current, full, connect, stuck):
    """What needs a person's attention, each said with what to do."""
    problems = [
        db.disk_full_message(current.data_dir) if full else None,
        connect["problem"],
        f"{stuck} jobs started but not finished within their deadline: they run again with"
        " the next card or at the next start; the worker's log says why" if stuck else None,
    ]
    return [problem for problem in problems if problem]


def sync_status(current, stored):
    """The sync login and how the last sync went."""
    path = config.db_path(current)
    last_sync = db.get_state(path, "last_sync_at")
    return {
        "loggedIn": "sync" in stored,
        "username": stored.get("sync", {}).get("username"),
        "endpoint": current.sync_endpoint or config.ANKIWEB,
        "lastSyncAt": jobs.iso(float(last_sync)) if last_sync else None,
        "lastOutcome": db.get_state(path, "last_sync_outcome"),
        "lastError": db.get_state(path, "last_sync_error") or None,
    }
