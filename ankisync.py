"""ankisync: an HTTP API that turns a word into an Anki cloze card with audio.

This file is the web process (a Bottle app served by waitress) and the command
line for every role. The web process validates, writes a job row and its queue
task in one commit, and answers; the Huey worker (huey_tasks.py, worker.py) does the slow work. It
never imports anki or google.cloud, so it stays small and starts fast.
"""

import argparse
import functools
import getpass
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import bottle

import auth
import config
import credentials
import db
import jobs
import throttle
import tts
from errors import AnkisyncError, ConfigError

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
CLOZE = re.compile(r"\{\{c\d+::(?!\}\})(.+?)\}\}", re.S)
CLOZE_MARK = re.compile(r"\{\{c\d+::")
ALLOWED_HEADERS = "content-type, x-access-token, authorization, idempotency-key"
# Error types of a failed job -> HTTP status of a ?async=false answer
FAILURE_STATUS = {"BadNote": 400, "TimeoutError": 504}

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
        except Exception:
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
        return auth.verify(stored_credentials(), token, "access")
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
            card[name] = value
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
        raise ApiError(403, "wrong API key (make a new one with `python ankisync.py api-key`)")
    bottle.response.status = 201
    return auth.issue_pair(db_path(), stored, settings().access_token_ttl,
                           settings().refresh_token_ttl)


@app.post("/api/v1/refresh")
@throttle.guard
def refresh():
    token = json_body().get("refreshToken")
    try:
        pair = auth.rotate(db_path(), stored_credentials(), token if isinstance(token, str) else "",
                           settings().access_token_ttl, settings().refresh_token_ttl)
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
    return {
        "status": "ok" if pid else "degraded",
        "worker": {"alive": bool(pid), "pid": pid},
        "queue": {status: all_jobs.get(status, 0) for status in jobs.UNFINISHED},
        "jobs": all_jobs,
        "stuckJobs": jobs.stuck(path),  # started, but past their deadline: run again later
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


@app.post("/api/v1/clozeNotes")
def add_cloze_note():
    access_claims()
    card = validate_card(json_body())
    key = bottle.request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 200:
        raise ApiError(400, "Idempotency-Key is too long: at most 200 characters")
    import huey_tasks
    try:
        job, created = jobs.create(db_path(), card, key, enqueue=huey_tasks.enqueue_in)
    except jobs.KeyReused as error:
        raise ApiError(409, "this Idempotency-Key was already used with a different card"
                            f" (task {error}); use a new key for a new card",
                       taskId=str(error)) from None
    if created:
        log.info("job %s: accepted", job["id"])
    if bottle.request.query.get("async", "true").lower() in ("false", "0", "no"):
        return wait_for(job["id"])
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
    import huey_tasks
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


def init_storage(current):
    config.ensure_data_dir(current)
    path = config.db_path(current)
    jobs.init(path)
    auth.init(path)
    credentials.ensure_signing_secret(config.credentials_path(current))


def serve(args):
    import waitress
    auth.keep_jwt_light()
    current = settings()
    init_storage(current)
    import huey_tasks  # noqa: F401  (the queue's tables exist before the first request)
    host, port = current.listen
    for line in config.describe(current):
        log.info("%s", line)
    if "api_key_sha256" not in stored_credentials():
        log.warning("no API key yet: make one with `python ankisync.py api-key`")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server = waitress.create_server(app, host=host, port=port, threads=16, ident="ankisync",
                                        max_request_body_size=MAX_BODY * 4)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}): is ankisync already"
                          " running? Stop it, or set ANKISYNC_LISTEN to another port") from None
    log.info("API listening on http://%s:%s", host, port)
    server.run()


def run_worker(args):
    current = settings()
    init_storage(current)
    import huey_tasks
    for line in config.describe(current):
        log.info("%s", line)
    pid_path = config.worker_pid_path(current)
    pid_path.write_text(str(os.getpid()))
    # One process worker: Huey enforces task timeouts only in process workers,
    # and a single writer is what the Anki collection allows. SIGTERM lets the
    # running job finish (bounded); SIGINT stops at once. Either way a job left
    # unfinished is recovered at the next start.
    consumer = huey_tasks.huey.create_consumer(
        workers=1, worker_type="process", periodic=False, initial_delay=0.05, backoff=1.15,
        max_delay=0.1, check_worker_health=True, health_check_interval=1,
        graceful_signal="TERM", shutdown_timeout=30)
    log.info("worker running (one process worker, task timeout %gs)", current.task_timeout)
    try:
        consumer.run()
    finally:
        pid_path.unlink(missing_ok=True)


def read_password():
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def do_login(username, password):
    """Log into the sync server, keep only the session key, sync what waits."""
    import ankiweb
    import huey_tasks
    current = settings()
    init_storage(current)
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
    sync, queue, day = info["sync"], info["queue"], info["last24h"]
    worker = (f"running (pid {info['worker']['pid']})" if info["worker"]["alive"]
              else "NOT RUNNING: start it with ./run.sh (or systemctl start ankisync)")
    login = (f"logged in as {sync['username']} at {sync['endpoint']}" if sync["loggedIn"]
             else f"not logged in: ./run.sh login USERNAME ({sync['endpoint']})")
    last = (f"{sync['lastSyncAt']} ({sync['lastOutcome']})" if sync["lastSyncAt"] else "never")
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
        f"data dir   {info['dataDir']['path']} ({info['dataDir']['bytes'] / 1e6:.1f} MB)",
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


def setup_command(args):
    """Sync login, voice and API key: from flags and environment, else by asking."""
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
    key = args.google_key or current.google_api_key or stored_key
    if voice in ("auto", "google") and not key:
        key = ask("Google text-to-speech API key (empty to skip): ", secret=True)
        if key is None and voice == "google":
            raise ConfigError("--tts google needs a key: --google-key or ANKISYNC_GOOGLE_API_KEY")
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
        prog="ankisync.py", description=__doc__.splitlines()[0],
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
    setup_parser.add_argument("--google-key", help="Google TTS API key, stored in credentials")
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


def setup_logging():
    level = os.environ.get("ANKISYNC_LOG_LEVEL", "INFO").upper()
    # journald stamps each line itself; elsewhere a time helps
    stamp = "" if stderr_is_journal() else "%(asctime)s "
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=stamp + "%(levelname)s %(name)s: %(message)s")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        settings()
        return args.run(args) or 0
    except (AnkisyncError, ConfigError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
