"""ankisync: an HTTP API that turns a word into an Anki cloze card with audio.

This file is the web process (a Bottle app served by waitress) and the command
line for every role. The web process validates, writes a job row and its queue
task in one commit, and answers; the Huey worker (huey_tasks.py, worker.py) does the slow work. It
never imports anki or google.cloud, so it stays small and starts fast.
"""

import argparse
import fcntl
import functools
import getpass
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import bottle
import nh3

import auth
import config
import credentials
import db
import huey_tasks
import jobs
import throttle
import tts
from errors import AlreadyRunning, AnkisyncError, ConfigError, DamagedFile

log = logging.getLogger("ankisync")

MAX_BODY = 64 * 1024
# API name -> (required, longest accepted length)
CARD_FIELDS = {
    "word": (True, 200),
    "partOfSpeech": (False, 100),
    "guideWord": (False, 200),
    "englishDefinition": (False, 2000),
    "definitionTranslation": (False, 2000),
    "cefrLevel": (False, 20),
    "code": (False, 100),
    "englishExample": (True, 2000),
    "exampleTranslation": (False, 2000),
}
# A cloze Anki makes a card of: numbered 1 to 65535 in ASCII digits (c0, c65536
# and other digits are no cloze to it); openapi.CLOZE_PATTERN says the same
CLOZE = re.compile(r"\{\{c0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                   r"|655[0-2][0-9]|6553[0-5])::(?!\}\})(.+?)\}\}", re.S)
CLOZE_MARK = re.compile(r"\{\{c[0-9]+::")
ALLOWED_HEADERS = "content-type, x-access-token, authorization, idempotency-key"
# Error types of a failed job -> HTTP status of a ?async=false answer
FAILURE_STATUS = {"BadNote": 400, "TimeoutError": 504}
# Card fields are HTML in Anki, and its reviewer (desktop, AnkiDroid) runs any
# script in them: a card keeps only these inline tags, without attributes. Text
# comes out as HTML too ("a < b" becomes "a &lt; b"), which Anki shows as sent.
CARD_TAGS = {"b", "i", "u", "em", "strong", "br", "sub", "sup"}
# ?async=false requests that may wait for the worker at once; each holds one of
# waitress's 16 threads, so login, health and status always keep most of them.
MAX_WAITERS = 4
_waiters = threading.BoundedSemaphore(MAX_WAITERS)

app = bottle.Bottle()


class ApiError(Exception):
    """An expected refusal, answered as JSON {"message": ...} with its status."""

    def __init__(self, status, message, **extra):
        super().__init__(message)
        self.status, self.body = status, {"message": message, **extra}


def settings():
    return config.current()


def db_path():
    return config.db_path(settings())


@functools.lru_cache(maxsize=1)
def _credentials(mtime_ns):
    return credentials.load(config.credentials_path(settings()))


def stored_credentials():
    """The credentials file, re-read when it changes (`api-key` rotates it)."""
    try:
        mtime = os.stat(config.credentials_path(settings())).st_mtime_ns
    except FileNotFoundError:
        mtime = 0
    return _credentials(mtime)


# --- the error boundary and CORS, in one place --------------------------------

def boundary(callback):
    """Bottle plugin: expected errors become JSON answers, unexpected ones a logged 500."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except ApiError as error:
            bottle.response.status = error.status
            return error.body
        except bottle.HTTPResponse:
            raise
        except Exception as error:
            if db.is_disk_full(error):  # not a bug: say what to free, never a generic 500
                log.warning("%s %s: disk full: %s", bottle.request.method, bottle.request.path,
                            error)
                bottle.response.status = 507
                return {"message": db.disk_full_message(settings().data_dir)}
            log.exception("%s %s failed", bottle.request.method, bottle.request.path)
            bottle.response.status = 500
            return {"message": "internal error: the server log has the details"}
    return wrapper


app.install(boundary)


def add_cors_headers(response):
    origin = bottle.request.headers.get("Origin")
    allowed = settings().cors_origins
    if "*" in allowed:
        response.set_header("Access-Control-Allow-Origin", "*")
        return
    response.set_header("Vary", "Origin")  # the answer depends on it, allowed or not: caches
    if origin in allowed:
        response.set_header("Access-Control-Allow-Origin", origin)


@app.hook("after_request")
def _after_request():
    add_cors_headers(bottle.response)


@functools.lru_cache(maxsize=1)
def known_hosts():
    """Names this server answers to: localhost, this machine's name, the listen host, and
    ANKISYNC_ALLOWED_HOSTS. IP addresses are always fine (a page cannot rebind them)."""
    name = socket.gethostname().lower()
    short = name.split(".")[0]
    return {"localhost", name, short, short + ".local", settings().listen[0].lower(),
            *settings().allowed_hosts}


@app.hook("before_request")
def check_host():
    """Refuse a Host that is not ours: a DNS-rebinding page on evil.example that now
    resolves to this machine sends Host: evil.example, and would read our answers."""
    host = bottle.request.environ.get("HTTP_HOST", "").strip().lower()
    if not host:  # HTTP/1.0 without Host: not a browser
        return
    if host.startswith("["):  # [::1]:5000
        name = host[1:].partition("]")[0]
    else:  # name:port, or a bare IPv6 address
        name = host.partition(":")[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
        return
    except OSError:
        pass
    if name in known_hosts() or name.endswith(".localhost"):
        return
    raise bottle.HTTPResponse(
        json.dumps({"message": f"this server is not {name!r} (the request's Host header): if"
                               " you reach ankisync by that name, add it to"
                               " ANKISYNC_ALLOWED_HOSTS in data/.env and restart"}),
        status=403, headers={"Content-Type": "application/json"})


def _error_page(error):
    """404, 405 and the like from Bottle itself: JSON, never its HTML page."""
    bottle.response.content_type = "application/json"
    add_cors_headers(bottle.response)
    if error.status_code == 500:
        return json.dumps({"message": "internal error: the server log has the details"})
    messages = {404: f"no such route: {bottle.request.path}",
                405: f"{bottle.request.method} is not allowed on {bottle.request.path}"}
    return json.dumps({"message": messages.get(error.status_code, error.status_line)})


app.default_error_handler = _error_page


def preflight(**_):
    """CORS preflight, answered for each API route (added below the routes)."""
    methods = []
    for method in ("GET", "POST", "DELETE"):
        try:
            app.router.match({"PATH_INFO": bottle.request.path, "REQUEST_METHOD": method})
            methods.append(method)
        except bottle.HTTPError:
            pass
    bottle.response.status = 204
    bottle.response.set_header("Access-Control-Allow-Methods", ", ".join(methods + ["OPTIONS"]))
    bottle.response.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
    bottle.response.set_header("Access-Control-Max-Age", "600")
    return ""


# --- request helpers ----------------------------------------------------------

def json_body():
    """The request's JSON object, or the 413/415/400 that says what is wrong."""
    request = bottle.request
    if request.content_length > MAX_BODY:
        raise ApiError(413, f"request body too large: at most {MAX_BODY} bytes")
    if request.content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send a JSON body with the header Content-Type: application/json")
    raw = request.body.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body too large: at most {MAX_BODY} bytes")
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode()  # a lone "\ud800" can't be stored
    except UnicodeEncodeError:  # before ValueError, its base
        raise ApiError(400, "the body is not valid JSON text: it holds a lone surrogate"
                            " escape such as \\ud800") from None
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def access_claims():
    """The caller's access token claims, or 401."""
    headers = bottle.request.headers
    token = headers.get("x-access-token")
    bearer = headers.get("Authorization", "")
    if not token and bearer.lower().startswith("bearer "):
        token = bearer[7:].strip()
    try:
        return auth.verify(stored_credentials(), token, "access", settings().access_token_ttl)
    except auth.TokenError as error:
        raise ApiError(401, str(error)) from None


def validate_card(data):
    """The nine card fields, cleaned; 400 naming every bad field."""
    card, problems = {}, {}
    for name, (required, longest) in CARD_FIELDS.items():
        value = data.get(name)
        if value is None and not required:
            value = ""
        if not isinstance(value, str):
            problems[name] = ("is required" if value is None else "must be a string")
        elif required and not value.strip():
            problems[name] = "must not be empty"
        elif len(value) > longest:
            problems[name] = f"is too long: at most {longest} characters"
        else:
            card[name] = nh3.clean(value, tags=CARD_TAGS, attributes={}) if value else value
            if required and not card[name].strip():
                problems[name] = "must not be empty (it held only markup that is not allowed)"
    for name in [name for name in card if name != "englishExample"]:
        if CLOZE_MARK.search(card[name]):
            problems[name] = ("must not hold cloze markers like {{c1::...}}:"
                              " only englishExample may")
    if "englishExample" in card and not CLOZE.search(card["englishExample"]):
        problems["englishExample"] = ("has no cloze: mark the hidden word like"
                                      " He told the {{c1::extraordinary}} story.")
    if problems:
        listed = "; ".join(f"{name} {why}" for name, why in problems.items())
        raise ApiError(400, f"invalid card: {listed}", errors=problems)
    return card


# --- routes -------------------------------------------------------------------

@app.get("/")
def index():
    return {"status": "ok"}


@app.post("/api/v1/login")
@throttle.guard  # failed logins per address: 429 after a few
def login():
    key = json_body().get("key")
    if not key:
        raise ApiError(401, 'missing API key: send {"key": "<your API key>"}')
    stored = stored_credentials()
    if not isinstance(key, str) or not auth.check_api_key(stored, key):
        raise ApiError(403, "wrong API key (make a new one with `./run.sh api-key`)")
    bottle.response.status = 201
    return auth.issue_pair(db_path(), stored, settings().access_token_ttl,
                           settings().refresh_token_ttl)


@app.post("/api/v1/refresh")
@throttle.guard
def refresh():
    token = json_body().get("refreshToken")
    try:
        pair = auth.rotate(db_path(), stored_credentials(), token if isinstance(token, str) else "",
                           settings().access_token_ttl, settings().refresh_token_ttl,
                           settings().refresh_reuse_interval)
    except auth.TokenError as error:
        raise ApiError(401, str(error)) from None
    bottle.response.status = 201
    return pair


@app.get("/api/v1/health")
def health():
    access_claims()
    return service_status(settings())


def service_status(current):
    """What a self-hoster needs to know: for /health and the status command."""
    path = config.db_path(current)
    stored = credentials.load(config.credentials_path(current))
    all_jobs, last_day = jobs.counts(path), jobs.counts(path, since=time.time() - 86400)
    pid = worker_pid()
    last_sync = db.get_state(path, "last_sync_at")
    # AnkiConnect as this worker found it at start: a state left by an earlier
    # worker (another pid) says nothing about this one
    connect = {"state": "off", "listen": None, "problem": None,
               "keyRequired": bool(current.ankiconnect_key)}
    if current.ankiconnect_listen:
        host, port = current.ankiconnect_listen
        recorded = json.loads(db.get_state(path, "ankiconnect") or "{}")
        fresh = pid is not None and recorded.get("worker") == pid
        connect.update(listen=f"{host}:{port}", problem=recorded.get("problem") if fresh else None,
                       state=recorded["state"] if fresh else "starting" if pid else "stopped")
    full = db.disk_full(current.data_dir)
    stuck = jobs.stuck(path)
    problems = [problem for problem in (
        db.disk_full_message(current.data_dir) if full else None,
        connect["problem"],
        f"{stuck} jobs started but not finished within their deadline: they run again with"
        " the next card or at the next start; the worker's log says why" if stuck else None,
    ) if problem]
    return {
        "status": "disk full" if full else "ok" if pid and not problems else "degraded",
        "problems": problems,
        "worker": {"alive": bool(pid), "pid": pid},
        "ankiconnect": connect,
        "disk": {"full": full, "freeBytes": db.free_bytes(current.data_dir),
                 "message": db.disk_full_message(current.data_dir) if full else None},
        "queue": {status: all_jobs.get(status, 0) for status in jobs.UNFINISHED},
        "jobs": all_jobs,
        "stuckJobs": stuck,  # started, but past their deadline: run again later
        "last24h": {status: last_day.get(status, 0) for status in ("success", "failure")},
        "sync": {
            "loggedIn": "sync" in stored,
            "username": stored.get("sync", {}).get("username"),
            "endpoint": current.sync_endpoint or config.ANKIWEB,
            "lastSyncAt": jobs.iso(float(last_sync)) if last_sync else None,
            "lastOutcome": db.get_state(path, "last_sync_outcome"),
            "lastError": db.get_state(path, "last_sync_error") or None,
        },
        "tts": tts.choose(current.tts, current.google_api_key
                          or stored.get("google_api_key")) or "none",
    }


@functools.lru_cache(maxsize=1)
def card_allowance():
    """Cards per login (token family): a burst, then a steady rate (throttle.Bucket)."""
    return throttle.Bucket(settings().card_burst, settings().card_rate)


def check_card_limits(claims):
    """429 with Retry-After when this login posts too fast, or too much waits already."""
    counts = jobs.counts(db_path(), since=float("inf"))  # unfinished ones only
    queued = sum(counts.get(status, 0) for status in jobs.UNFINISHED)
    if queued >= settings().max_queued:
        bottle.response.set_header("Retry-After", "60")
        raise ApiError(429, f"{queued} cards are waiting for the worker already: try again"
                            " later (the limit is ANKISYNC_MAX_QUEUED)", retryAfter=60)
    wait = card_allowance().take(claims.get("fam") or claims["jti"])
    if wait:
        bottle.response.set_header("Retry-After", str(wait))
        raise ApiError(429, f"too many cards from this login: wait {wait} s (the limits are"
                            " ANKISYNC_CARD_BURST at once and ANKISYNC_CARD_RATE per second)",
                       retryAfter=wait)


@app.post("/api/v1/clozeNotes")
def add_cloze_note():
    claims = access_claims()
    card = validate_card(json_body())
    if db.disk_full(settings().data_dir):  # the worker could not make it: refuse it now
        raise ApiError(507, db.disk_full_message(settings().data_dir))
    key = bottle.request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 200:
        raise ApiError(400, "Idempotency-Key is too long: at most 200 characters")
    check_card_limits(claims)
    try:
        job, created = jobs.create(db_path(), card, key, enqueue=huey_tasks.enqueue_in)
    except jobs.KeyReused as error:
        raise ApiError(409, "this Idempotency-Key was already used with a different card"
                            f" (task {error}); use a new key for a new card",
                       taskId=str(error)) from None
    if created:
        log.info("job %s: accepted", job["id"])
    if bottle.request.query.get("async", "true").lower() in ("false", "0", "no"):
        if _waiters.acquire(blocking=False):
            try:
                return wait_for(job["id"])
            finally:
                _waiters.release()
        bottle.response.status = 202
        bottle.response.set_header("Location", f"/api/v1/tasks/{job['id']}")
        return {**accepted(job), "message": f"{MAX_WAITERS} requests wait for the worker"
                " already: this one was accepted without waiting; poll statusUrl"}
    if not created:  # the same request again: the original task, as it stands now
        return {**accepted(job), **jobs.status_body(job)}
    bottle.response.status = 202
    bottle.response.set_header("Location", f"/api/v1/tasks/{job['id']}")
    return accepted(job)


def accepted(job):
    return {"taskId": job["id"], "status": job["status"],
            "statusUrl": f"/api/v1/tasks/{job['id']}", "createdAt": jobs.iso(job["created_at"])}


def wait_for(job_id):
    """?async=false: wait for the worker to finish the job (the web process never runs it)."""
    deadline = time.monotonic() + settings().task_timeout + 5
    delay = 0.01
    while True:
        job = jobs.get(db_path(), job_id)
        if job["status"] in ("success", "failure") or time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)
    body = jobs.status_body(job)
    if job["status"] == "success":
        return {"status": "ok", **body["result"], "taskId": job_id, "task": body}
    if job["status"] == "failure":
        bottle.response.status = FAILURE_STATUS.get(body["error"]["type"], 502)
        return {"status": "failure", "message": body["error"]["message"], "taskId": job_id,
                "task": body}
    bottle.response.status = 202  # still retrying: the client can poll like an async one
    return {**accepted(job), "status": job["status"],
            "message": "the job is not finished yet (it is being retried); poll statusUrl"}


def find_job(job_id):
    job = jobs.get(db_path(), job_id) if jobs.is_id(job_id) else None
    if job is None:
        raise ApiError(404, f"no task {job_id!r}: unknown, or finished more than"
                            f" {settings().result_ttl:g} s ago and forgotten")
    return job


@app.get("/api/v1/tasks/<job_id>")
def task_status(job_id):
    access_claims()
    return jobs.status_body(find_job(job_id))


@app.get("/api/v1/tasks")
def task_list():
    """Recent jobs, newest first; ?status= filters, ?before=<taskId> pages."""
    access_claims()
    query = bottle.request.query
    status, before = query.get("status") or None, query.get("before") or None
    if status is not None and status not in jobs.STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(jobs.STATUSES)}")
    try:
        limit = int(query.get("limit") or 20)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise ApiError(400, "limit must be a whole number from 1 to 100")
    if before is not None:
        if not jobs.is_id(before):  # empty is absent, like status= and limit=
            raise ApiError(400, f"before {before!r} is not a taskId: pass the 32 hex digits"
                                " of `next`, or leave before out for the first page")
        find_job(before)
    found = jobs.recent(db_path(), status, limit + 1, before)
    page = found[:limit]
    return {"tasks": [jobs.status_body(job) for job in page],
            "next": page[-1]["id"] if len(found) > limit else None}


@app.post("/api/v1/tasks/<job_id>/retry")
def task_retry(job_id):
    """Run a failed job again."""
    access_claims()
    job = find_job(job_id)
    if not jobs.reopen(db_path(), job_id):
        raise ApiError(409, f"task {job_id} is {job['status']}: only a failed task can be retried")
    huey_tasks.enqueue(job_id)
    bottle.response.status = 202
    return jobs.status_body(jobs.get(db_path(), job_id))


@app.delete("/api/v1/tasks/<job_id>")
def task_cancel(job_id):
    """Cancel a job that has not started yet."""
    access_claims()
    job = find_job(job_id)
    if not jobs.cancel(db_path(), job_id):
        job = jobs.get(db_path(), job_id)
        if job["added_at"] is not None and job["status"] != "failure":
            raise ApiError(409, f"task {job_id} cannot be cancelled: its note is already in the"
                                " collection and goes to the sync server with the next sync"
                                " (delete the note in Anki if you do not want it)")
        raise ApiError(409, f"task {job_id} is {job['status']}: only a task that has not"
                            " started can be cancelled")
    return jobs.status_body(jobs.get(db_path(), job_id))


@app.get("/api/v1/openapi.json")
def openapi_document():
    """The OpenAPI 3 description of this API (openapi.py), no auth needed."""
    import openapi
    return openapi.document(CARD_FIELDS, MAX_BODY)


for _rule in sorted({route.rule for route in app.routes if route.rule.startswith("/api/v1/")}):
    app.route(_rule, "OPTIONS", preflight)


# --- processes ----------------------------------------------------------------

def worker_pid():
    """The worker's pid if it is running, else None (read from its pid file)."""
    try:
        pid = int(config.worker_pid_path(settings()).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:  # not a reused pid
            return pid if b"worker" in cmdline.read().split(b"\0") else None
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def hold_lock(current, role):
    """This data dir's lock for role ("api" or "worker"), held for the process's life.

    A second instance is refused before it touches anything, with the first
    one's pid and address. The fd is never closed: the lock goes with the
    process (and the worker's children, which inherit it).
    """
    config.ensure_data_dir(current)
    path = config.lock_path(current, role)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split() or ["?", "?"]
        os.close(fd)
        raise AlreadyRunning(
            f"ankisync is already running on the data dir {current.data_dir.resolve()}: its"
            f" {role.replace('api', 'API')}"
            f" has pid {holder[0]}, its API listens on {holder[-1]} ({path} is locked). Stop it"
            " first (sudo systemctl stop ankisync, or Ctrl-C where ./run.sh runs), or give this"
            " one its own ANKISYNC_DATA_DIR") from None
    host, port = current.listen
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {host}:{port}\n".encode(), 0)
    return fd


def check_files(current):
    """Stop with the file's name and the fix when a file of the data dir is damaged."""
    path, kept = config.db_path(current), config.credentials_path(current)
    fix = (f"move it aside (mv {path} {path}.damaged, and its -wal and -shm files), then put"
           " back ankisync.db from your backup (README: Backup and restore). Without a backup,"
           " just start again: a new one is made; notes already in the collection are kept and"
           " synced, but cards still waiting in it are lost (post them again) and clients log in"
           " again with the API key. Nothing in it comes back from the sync server")
    wal = path.with_name(path.name + "-wal")
    # SQLite would take an emptied file for a new one, and start on an empty job table
    if (path.exists() and path.stat().st_size == 0 and kept.exists()
            and not (wal.exists() and wal.stat().st_size)):
        raise DamagedFile(f"{path} is empty, yet this data dir was used before ({kept} exists):"
                          f" the jobs it held are gone. Stop ankisync, {fix}")
    db.check_file(path, "stop ankisync, " + fix)
    credentials.load(kept)  # raises naming the file when it is not JSON


def init_storage(current):
    config.ensure_data_dir(current)
    check_files(current)
    path = config.db_path(current)
    jobs.init(path)
    auth.init(path)
    credentials.ensure_signing_secret(config.credentials_path(current))


def voice(current):
    """The TTS provider in use and its credentials, for the start-up log."""
    stored = credentials.load(config.credentials_path(current))
    key = current.google_api_key or stored.get("google_api_key")
    provider = tts.choose(current.tts, key) or "none (cards without audio)"
    if provider == "google":
        provider += (" with an API key" if key else " with GOOGLE_APPLICATION_CREDENTIALS="
                     f"{current.google_application_credentials}")
    return provider


def serve(args):
    import waitress
    auth.keep_jwt_light()
    current = settings()
    hold_lock(current, "api")
    init_storage(current)
    huey_tasks.init(current)  # the queue's tables exist before the first request
    host, port = current.listen
    for line in config.describe(current, voice(current)):
        log.info("%s", line)
    if "api_key_sha256" not in stored_credentials():
        log.warning("no API key yet: make one with `./run.sh api-key`")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server = waitress.create_server(
            app, host=host, port=port, threads=16, ident="ankisync",
            max_request_body_size=MAX_BODY * 4,
            # Slow clients (slowloris: a header byte every few seconds) cost waitress a
            # socket, not a thread, until connection_limit sockets are open; then it stops
            # accepting and the API is gone. So: room for many (poll(), not select(), which
            # fails past 1,024 descriptors; each idle connection costs a few KB), and idle
            # ones are closed after 30 s, checked every 5 s, instead of 120 s every 30 s.
            connection_limit=800, asyncore_use_poll=True, channel_timeout=30,
            cleanup_interval=5)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}): is ankisync already"
                          " running? Stop it, or set ANKISYNC_LISTEN to another port") from None
    server.channel_class = _json_error_channel()
    log.info("API listening on http://%s:%s", host, port)
    server.run()


def _json_error_channel():
    """waitress's channel, with its own errors (body too large, bad request) as JSON."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            self.status = f"{error.code} {error.reason}"
            reason = (f"request body too large: at most {MAX_BODY} bytes" if error.code == 413
                      else f"{error.reason.lower()}: {error.body}")
            body = json.dumps({"message": reason}).encode()
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    return type("JsonErrorChannel", (HTTPChannel,), {"error_task_class": JsonErrorTask})


def run_worker(args):
    current = settings()
    hold_lock(current, "worker")
    init_storage(current)
    # Nobody holds the collection now: a damaged one is refused here, not mid-job.
    collection = config.collection_path(current)
    db.check_file(collection, (
        f"stop ankisync, move it aside (mv {collection} {collection}.damaged) and start again:"
        " the next sync downloads your collection from the sync server, and cards added since"
        " the last sync are added again from the job table. Without a sync login, put back"
        " collection.anki2 from your backup instead (README: Backup and restore)"))
    huey_tasks.init(current)
    for line in config.describe(current, voice(current)):
        log.info("%s", line)
    pid_path = config.worker_pid_path(current)
    pid_path.write_text(str(os.getpid()))
    try:
        huey_tasks.run_consumer(current)
    finally:
        pid_path.unlink(missing_ok=True)


def read_password():
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def do_login(username, password):
    """Log into the sync server, keep only the session key, sync what waits."""
    import ankiweb
    current = settings()
    init_storage(current)
    huey_tasks.init(current)
    session = ankiweb.login(username, password, current.sync_endpoint)
    credentials.update(config.credentials_path(current), sync={
        "username": username, "hkey": session["hkey"], "endpoint": session["endpoint"],
        "login_endpoint": current.sync_endpoint})
    huey_tasks.sync_now()  # cards made before the login go up now
    log.info("logged into %s as %s; the session key is stored, the password is not",
             current.sync_endpoint or config.ANKIWEB, username)


def login_command(args):
    do_login(args.username, read_password())


def make_api_key():
    key = auth.new_api_key(config.credentials_path(settings()))
    print(key, flush=True)
    log.warning("this is your new API key; it is shown only once (only its hash is kept)."
                " Tokens issued with an older key no longer work.")


def api_key_command(args):
    current = settings()
    init_storage(current)
    if args.if_missing and "api_key_sha256" in stored_credentials():
        return
    make_api_key()


def status_command(args):
    """The service at a glance; exit status 1 when the worker is not running."""
    current = settings()
    init_storage(current)
    info = service_status(current)
    info["dataDir"] = {"path": str(current.data_dir.resolve()),
                       "bytes": sum(p.stat().st_size for p in current.data_dir.rglob("*")
                                    if p.is_file())}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info["worker"]["alive"] else 1
    sync, queue, day, connect = info["sync"], info["queue"], info["last24h"], info["ankiconnect"]
    worker = (f"running (pid {info['worker']['pid']})" if info["worker"]["alive"]
              else "NOT RUNNING: start it with ./run.sh (or systemctl start ankisync)")
    login = (f"logged in as {sync['username']} at {sync['endpoint']}" if sync["loggedIn"]
             else f"not logged in: ./run.sh login USERNAME ({sync['endpoint']})")
    last = (f"{sync['lastSyncAt']} ({sync['lastOutcome']})" if sync["lastSyncAt"] else "never")
    who = ("key required" if connect["keyRequired"]
           else "no key: only this user's programs on this machine")
    ankiconnect = {"off": "off (ANKISYNC_ANKICONNECT_LISTEN is empty)",
                   "listening": f"on http://{connect['listen']}, {who}",
                   "starting": f"starting on {connect['listen']}",
                   "stopped": "not serving: the worker is not running",
                   }.get(connect["state"], f"NOT SERVING: {connect['problem']}")
    lines = [
        f"worker     {worker}",
        f"queue      {queue['pending']} pending, {queue['started']} started,"
        f" {queue['retrying']} retrying",
        f"last 24 h  {day['success']} done, {day['failure']} failed"
        + ("  (GET /api/v1/tasks?status=failure lists them)" if day["failure"] else ""),
        f"sync       {login}",
        f"last sync  {last}",
        f"last error {sync['lastError'] or 'none'}",
        f"voice      {info['tts']}",
        f"ankiconnect {ankiconnect}",
        f"data dir   {info['dataDir']['path']} ({info['dataDir']['bytes'] / 1e6:.1f} MB)",
        "disk       " + (f"FULL: {info['disk']['message']}" if info["disk"]["full"]
                         else f"{info['disk']['freeBytes'] / 1e6:.0f} MB free"),
    ]
    print("\n".join(lines))
    return 0 if info["worker"]["alive"] else 1


def ask(prompt, secret=False):
    """An answer from the person at the terminal; None when there is none."""
    if not sys.stdin.isatty():
        return None
    return (getpass.getpass(prompt) if secret else input(prompt)).strip() or None


def check_voice(current, provider, key):
    """Speak one short word now, so a bad key shows up here and not in the first card."""
    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        tts.ensure_clip(Path(scratch), "ankisync", provider=provider, api_key=key,
                        endpoint=current.google_tts_endpoint, timeout=30,
                        voice=current.espeak_voice if provider == "espeak" else current.tts_voice)


def read_google_key(path):
    """The key from --google-key-file: a file, or "-" for a line of stdin (never argv, which
    every user of the machine sees in ps)."""
    if not path:
        return None
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"--google-key-file {path}: cannot read it ({error.strerror})") from None
    return text.strip() or None


def setup_command(args):
    """Sync login, voice and API key: from flags and environment, else by asking."""
    if args.google_key:
        raise ConfigError("--google-key shows the key to every user of this machine (ps):"
                          " put it in a file and use --google-key-file PATH, or pipe it with"
                          " --google-key-file -, or answer the prompt")
    current = settings()
    init_storage(current)
    log.info("ankisync setup, data dir %s", current.data_dir.resolve())
    username = args.username or os.environ.get("ANKISYNC_SETUP_USERNAME") or ask(
        f"{current.sync_endpoint or config.ANKIWEB} username (empty to skip): ")
    if username:
        password = os.environ.get("ANKISYNC_SETUP_PASSWORD") or read_password()
        do_login(username, password)

    voice = args.tts or ask("Voice: google, espeak (offline) or none [auto]: ") or current.tts
    if voice not in ("auto", "google", "espeak", "none"):
        raise ConfigError(f"--tts {voice!r}: expected auto, google, espeak or none")
    stored_key = stored_credentials().get("google_api_key")
    key = read_google_key(args.google_key_file) or current.google_api_key or stored_key
    if voice in ("auto", "google") and not key:
        key = ask("Google text-to-speech API key (empty to skip): ", secret=True)
        if key is None and voice == "google":
            raise ConfigError("--tts google needs a key: --google-key-file PATH (- for stdin),"
                              " ANKISYNC_GOOGLE_API_KEY_FILE, or the prompt at a terminal")
    provider = tts.choose(voice, key)
    if provider:
        check_voice(current, provider, key)
        log.info("voice %s works", provider)
    if key and key not in (current.google_api_key, stored_key):  # kept once it worked
        credentials.update(config.credentials_path(current), google_api_key=key)
    else:
        log.warning("no voice: cards will be made without audio")
    if voice != current.tts:
        config.update_env_file(current.data_dir / ".env", ANKISYNC_TTS=voice)

    have_key = "api_key_sha256" in stored_credentials()
    new_key = args.new_api_key or not have_key or (
        (ask("Make a new API key for clients (old tokens stop working)? [y/N] ") or "n")
        .lower().startswith("y"))
    if new_key:
        make_api_key()
    log.info("setup done: start the service with ./run.sh")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="./run.sh", description=__doc__.splitlines()[0],
        epilog="Settings (environment or DATA_DIR/.env):\n" + config.reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API").set_defaults(run=serve)
    commands.add_parser("worker", help="run the Huey worker").set_defaults(run=run_worker)
    login_parser = commands.add_parser("login", help="log into AnkiWeb or the sync server")
    login_parser.add_argument("username")
    login_parser.set_defaults(run=login_command)
    key_parser = commands.add_parser("api-key", help="make a new API key, print it once")
    key_parser.add_argument("--if-missing", action="store_true",
                            help="only when none exists yet (first start)")
    key_parser.set_defaults(run=api_key_command)
    setup_parser = commands.add_parser(
        "setup", help="sync login, voice, API key: asks, or takes flags for scripts",
        description="Each answer may come from a flag or the environment; what is"
                    " missing is asked when a person is at the terminal, else skipped."
                    " The password comes from ANKISYNC_SETUP_PASSWORD or stdin.")
    setup_parser.add_argument("--username", help="sync login (or ANKISYNC_SETUP_USERNAME)")
    setup_parser.add_argument("--tts", choices=("auto", "google", "espeak", "none"),
                              help="voice; stored as ANKISYNC_TTS in DATA_DIR/.env")
    setup_parser.add_argument("--google-key-file", metavar="PATH",
                              help="file holding the Google TTS API key (- reads a line of"
                                   " stdin, after the password); stored in credentials")
    setup_parser.add_argument("--google-key", help=argparse.SUPPRESS)  # refused: see below
    setup_parser.add_argument("--new-api-key", action="store_true",
                              help="make a new API key even if one exists")
    setup_parser.set_defaults(run=setup_command)
    status_parser = commands.add_parser("status", help="worker, queue, jobs, last sync")
    status_parser.add_argument("--json", action="store_true", help="for scripts")
    status_parser.set_defaults(run=status_command)
    return parser.parse_args(argv)


def stderr_is_journal():
    """Whether stderr goes to journald (JOURNAL_STREAM names it; shells may inherit it)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{status.st_dev}:{status.st_ino}" == f"{device}:{inode}"


def setup_logging(level):
    # journald stamps each line itself; elsewhere a time helps
    stamp = "" if stderr_is_journal() else "%(asctime)s "
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=stamp + "%(levelname)s %(name)s: %(message)s")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        current = settings()  # first: the log level is one of them, from .env too
    except ConfigError as error:
        setup_logging("INFO")
        log.error("%s", error)
        return 1
    setup_logging(current.log_level)
    if current.google_application_credentials:  # Google's library reads it from here
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = current.google_application_credentials
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # now, not at exit: a reader that left (`| head`) is no error
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except AnkisyncError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
