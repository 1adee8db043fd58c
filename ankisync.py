"""ankisync: an HTTP API that turns a word into an Anki cloze card with audio.

This file is the web app (Bottle, served by waitress: see cli.serve) and the one
entry point; the commands and start-up are in cli.py. The web process validates,
writes a job row and its queue task in one commit, and answers; the Huey worker
(huey_tasks.py, worker.py) does the slow work. It never imports anki or
google.cloud, so it stays small and starts fast.
"""

import functools
import hmac
import json
import logging
import os
import re
import socket
import sys
import threading
import time

import bottle
import nh3

import auth
import card_options
import cli
import config
import credentials
import db
import duplicates
import huey_tasks
import jobs
import notes
import openapi
import statuspage
import throttle
from cli import MAX_BODY
from health import service_status, worker_pid

log = logging.getLogger("ankisync")

# API name -> (required, longest accepted length), from the card's one table
CARD_FIELDS = {field.name: (field.required, field.longest) for field in notes.CARD_FIELDS}
# A cloze Anki makes a card of: numbered 1 to 65535 in ASCII digits (c0, c65536
# and other digits are no cloze to it); openapi.CLOZE_PATTERN says the same
CLOZE = re.compile(r"\{\{c0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                   r"|655[0-2][0-9]|6553[0-5])::(?!\}\})(.+?)\}\}", re.S)
CLOZE_MARK = re.compile(r"\{\{c[0-9]+::")
# A "<" no ">" follows is text ("a <b c"): an HTML parser would drop the rest of the
# field as an unfinished tag, cloze and all
UNCLOSED_TAG = re.compile(r"<(?=[^>]*\Z)")
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
    if bottle.request.path == "/healthz":  # alive or not, to whatever name a monitor uses
        return
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
            card[name] = nh3.clean(UNCLOSED_TAG.sub("&lt;", value), tags=CARD_TAGS,
                                   attributes={}) if value else value
            if required and not card[name].strip():
                problems[name] = "must not be empty (it held only markup that is not allowed)"
    for name in [name for name in card if name != "englishExample"]:
        if CLOZE_MARK.search(card[name]):
            problems[name] = ("must not hold cloze markers like {{c1::...}}:"
                              " only englishExample may")
    if "englishExample" in card and not CLOZE.search(card["englishExample"]):
        problems["englishExample"] = ("has no cloze: mark the hidden word like"
                                      " He told the {{c1::extraordinary}} story.")
    options, wrong = card_options.check(data, settings().audio_url_hosts)  # deck, tags...
    card.update(options)
    problems.update(wrong)
    if problems:
        listed = "; ".join(f"{name} {why}" for name, why in problems.items())
        raise ApiError(400, f"invalid card: {listed}", errors=problems)
    return card


# --- routes -------------------------------------------------------------------

@app.get("/")
def index():
    return {"status": "ok"}


@app.get("/healthz")
def healthz():
    """For Docker, uptime monitors and proxies: 200 only when the API and the worker run.
    No token, and nothing else told; cheap: the worker's pid file, no database."""
    bottle.response.set_header("Cache-Control", "no-store")
    if worker_pid(settings()) is None:
        bottle.response.status = 503
        return {"status": "unavailable", "message": "the worker is not running"}
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


@functools.lru_cache(maxsize=1)
def card_allowance():
    """Cards per login (token family): a burst, then a steady rate (throttle.Bucket)."""
    return throttle.Bucket(settings().card_burst, settings().card_rate)


def check_card_limits(claims):
    """429 with Retry-After when this login posts too fast, or too much waits already."""
    queued = jobs.unfinished_count(db_path())
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
    data = json_body()
    card = validate_card(data)
    refuse = duplicate_rule(data) == "refuse"
    if db.disk_full(settings().data_dir):  # the worker could not make it: refuse it now
        raise ApiError(507, db.disk_full_message(settings().data_dir))
    key = bottle.request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 200:
        raise ApiError(400, "Idempotency-Key is too long: at most 200 characters")
    check_card_limits(claims)
    try:
        job, created = jobs.create(db_path(), card, key, enqueue=huey_tasks.enqueue_in,
                                   check=duplicates.refuse_held(card["word"]) if refuse else None)
    except jobs.KeyReused as error:
        raise ApiError(409, "this Idempotency-Key was already used with a different card"
                            f" (task {error}); use a new key for a new card",
                       taskId=str(error)) from None
    except duplicates.Held as held:
        raise ApiError(409, duplicate_message(card["word"], held), noteIds=held.note_ids,
                       taskIds=held.task_ids) from None
    if created:
        huey_tasks.nudge()
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


def duplicate_rule(data):
    """The card's onDuplicate: allow (the default: a second meaning) or refuse; 400 otherwise."""
    rule = data.get("onDuplicate", "allow")
    if rule not in duplicates.RULES:
        raise ApiError(400, 'invalid card: onDuplicate must be "allow" (add it even if the word'
                            ' has a note already) or "refuse"',
                       errors={"onDuplicate": 'must be "allow" or "refuse"'})
    return rule


def duplicate_message(word, held):
    where = []
    if held.note_ids:
        where.append("in the collection already (note " +
                     ", ".join(str(note_id) for note_id in held.note_ids) + ")")
    if held.task_ids:
        where.append("in a card still being made (task " + ", ".join(held.task_ids) + ")")
    return (f"the word {word!r} is {' and '.join(where)}: no card was made. Send"
            ' "onDuplicate": "allow" to add it anyway (another meaning); GET'
            " /api/v1/notes?word=... lists its notes")


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
    return {"tasks": [{**jobs.status_body(job), **jobs.summary(job)} for job in page],
            "next": page[-1]["id"] if len(found) > limit else None}


@app.get("/api/v1/notes")
def notes_with_word():
    """The notes that already hold ?word= (case and spacing aside): duplicates.py's index."""
    access_claims()
    query = bottle.request.query
    word = query.getunicode("word")
    if word is None and "word" in query:
        raise ApiError(400, "word is not UTF-8 text: percent-encode its UTF-8 bytes")
    if word is None or not word.strip():
        raise ApiError(400, "word is missing: ask GET /api/v1/notes?word=extraordinary")
    if len(word) > duplicates.LONGEST_WORD:
        raise ApiError(400, f"word is too long: at most {duplicates.LONGEST_WORD} characters")
    return {"word": word, "notes": duplicates.lookup(db_path(), word)}


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


@app.get("/api/v1/stats/daily")
def daily_stats():
    """Cards made and jobs failed per day, oldest first: the status page's chart."""
    access_claims()
    query = bottle.request.query
    days = whole_number(query, "days", 30, 1, 366)
    offset = whole_number(query, "utcOffset", 0, -720, 840)
    return {"days": jobs.daily(db_path(), days, offset * 60), "utcOffset": offset}


def whole_number(query, name, default, lowest, highest):
    """A whole number query parameter within bounds, or 400 naming it; empty is absent."""
    text = query.get(name) or str(default)
    if not re.fullmatch(r"-?[0-9]{1,6}", text) or not lowest <= int(text) <= highest:
        raise ApiError(400, f"{name} must be a whole number from {lowest} to {highest}")
    return int(text)


@app.get("/ui")
def status_page_folder():
    raise bottle.HTTPResponse(status=301, headers={"Location": "ui/"})  # relative: proxies


@app.get("/ui/")
@app.get("/ui/<name>")
def status_page(name="index.html"):
    """The status page's files (statuspage.py): no token needed, no data in them."""
    found = statuspage.asset(name, bottle.request.headers.get("If-None-Match"))
    if found is None:
        raise ApiError(404, f"no such file of the status page: {name!r} (open /ui/)")
    status, headers, body = found
    raise bottle.HTTPResponse(body, status=status, headers=headers)


@app.get("/api/v1/openapi.json")
def openapi_document():
    """The OpenAPI 3 description of this API (openapi.py), no auth needed."""
    return openapi.document(CARD_FIELDS, MAX_BODY, settings().audio_url_hosts)


@app.get("/metrics")
def metrics_page():
    """Prometheus metrics, when ANKISYNC_METRICS=on (metrics.py)."""
    if not settings().metrics:
        raise ApiError(404, "no such route: /metrics (metrics are off: set ANKISYNC_METRICS=on"
                            " in data/.env and restart)")
    check_metrics_access()
    import metrics  # only with metrics on: prometheus_client costs the web process a few MB
    bottle.response.content_type = metrics.CONTENT_TYPE
    return metrics.render(settings())


FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def check_metrics_access():
    """With ANKISYNC_METRICS_KEY set: that key or an API access token, from anyone.
    Without: any program on this machine, unless it forwards for another (a reverse
    proxy), which needs a token. Never a web page: Prometheus sends no Origin, a
    browser's cross-site fetch does."""
    headers = bottle.request.headers
    if headers.get("Origin"):
        raise ApiError(403, "/metrics is read by Prometheus, not by web pages")
    key, bearer = settings().metrics_key, headers.get("Authorization", "")
    if not key and not any(headers.get(name) for name in FORWARDED) and config.is_loopback(
            bottle.request.environ.get("REMOTE_ADDR", "").removeprefix("::ffff:")):
        return
    if key and bearer.lower().startswith("bearer ") and hmac.compare_digest(
            bearer[7:].strip().encode(), key.encode()):
        return
    try:
        access_claims()
    except ApiError:
        raise ApiError(401, "/metrics needs the header Authorization:"
                            " Bearer <ANKISYNC_METRICS_KEY>" + ("" if key else
                            " (set ANKISYNC_METRICS_KEY first)") + ", or an API access token"
                       ) from None


for _rule in sorted({route.rule for route in app.routes if route.rule.startswith("/api/v1/")}):
    app.route(_rule, "OPTIONS", preflight)


def main(argv=None):
    """The one entry point (run.sh runs this file): the commands are in cli.py."""
    return cli.main(sys.argv[1:] if argv is None else argv, app)


if __name__ == "__main__":
    sys.exit(main())
