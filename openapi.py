"""The OpenAPI 3 description of the HTTP API, served at /api/v1/openapi.json.

Built in code so that the card fields and their length caps come from the
table the server validates with (notes.CARD_FIELDS, passed in as
ankisync.CARD_FIELDS), and the job statuses from jobs.STATUSES.
tests/test_openapi.py checks it against the server: every route and method the
app has is here, and schemathesis, run against the served document, finds no
request the server and this document judge differently and no answer this
document does not allow.
"""

import re

import card_options
import jobs
from duplicates import LONGEST_WORD, RULES
from version import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
TASK_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$",
           "description": "32 lowercase hex digits; anything else is an unknown task (404)"}
# ankisync.CLOZE and CLOZE_MARK as ECMA-262 patterns (JSON Schema has no lookahead
# in every validator): a cloze is {{cN:: with N from 1 to 65535 as Anki wants, then
# text not starting with }}, then }}. tests/test_openapi.py holds them to the
# server's own expressions.
CLOZE_PATTERN = (r"\{\{c0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                 r"|655[0-2][0-9]|6553[0-5])::([^}]|\}[^}])[\s\S]*\}\}")
CLOZE_MARK_PATTERN = r"\{\{c[0-9]+::"
# A character Python's str.strip() keeps, which a required field needs: spelled
# out, because \s differs between ECMA-262 and Python (\x1c-\x1f, \x85, \ufeff).
NOT_BLANK = r"[^\t-\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
TIME = {"type": "string", "format": "date-time", "nullable": True}


def _json(schema, description, headers=None):
    answer = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description):
    return _json(ERROR, description)


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema, max_body):
    return {"required": True, "content": {"application/json": {"schema": schema}},
            "description": f"a JSON object of at most {max_body} bytes"}


BAD_BODY = {"400": _error("the body is not a JSON object, or a field is wrong"),
            "413": _error("the body is too large"),
            "415": _error("the body is not sent as Content-Type: application/json")}
AUTH = {"401": _error("missing, malformed, expired or revoked access token, or a refresh"
                      " token where an access token belongs")}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "required": True,
                               "schema": {"type": "integer", "minimum": 0}}}
THROTTLED = {"429": _json({"$ref": "#/components/schemas/Throttled"},
                          "too many failed attempts from this address", RETRY_AFTER)}
UNKNOWN_TASK = {"404": _error("no such task, or finished and forgotten (ANKISYNC_RESULT_TTL)")}


def card_options_schema(audio_hosts):
    """A card's options (card_options.py: the same patterns and bounds)."""
    low, high = card_options.RATES
    url = {"type": "string", "maxLength": card_options.URL_LONGEST,
           "pattern": card_options.url_pattern(audio_hosts)} if audio_hosts else {
        "type": "string", "minLength": 1, "maxLength": 0}  # none: the list is empty
    return {
        "type": "object",
        "description": "Optional; missing or null: the settings' (ANKISYNC_DECK, no tags, the"
                       " configured voice and rate, the word spoken)",
        "properties": {
            "deck": {"type": "string", "nullable": True, "maxLength": card_options.DECK_LONGEST,
                     "pattern": card_options.DECK_PATTERN,
                     "description": "the deck, created when missing; :: makes a sub-deck"},
            "tags": {"type": "array", "nullable": True, "maxItems": card_options.MOST_TAGS,
                     "items": {"type": "string", "maxLength": card_options.TAG_LONGEST,
                               "pattern": card_options.TAG_PATTERN},
                     "description": "the note's tags, each without spaces"},
            "voice": {"type": "string", "nullable": True,
                      "maxLength": card_options.VOICE_LONGEST,
                      "pattern": card_options.VOICE_PATTERN,
                      "description": "a voice of the configured provider (ANKISYNC_TTS); one"
                                     " it refuses fails the task, naming this field"},
            "speakingRate": {"type": "number", "nullable": True, "minimum": low,
                             "maximum": high, "description": "1.0: the voice's own speed"},
            "wordAudioUrl": {**url, "nullable": True,
                             "description": "a recording of the word, used instead of speaking"
                                            " it: http(s) from a host in"
                                            " ANKISYNC_AUDIO_URL_HOSTS (as listed; a port only"
                                            " where listed); fetched by the worker, which"
                                            " fails the task if it is not audio, too big or"
                                            " unreachable"},
        },
    }


def schemas(card_fields, audio_hosts=()):
    """The components' schemas; the card from the server's own field table."""
    def field(name, required, longest):
        """What the server's validate_card accepts for one field."""
        if name == "englishExample":
            return {"type": "string", "maxLength": longest, "pattern": CLOZE_PATTERN,
                    "description": "holds a cloze, such as He told the {{c1::extraordinary}}"
                                   " story."}
        rule = {"type": "string", "maxLength": longest,
                "not": {"type": "string", "pattern": CLOZE_MARK_PATTERN},
                "description": "no cloze markers: only englishExample may hold them"}
        # required: not blank; optional: null or missing is empty
        return {**rule, "pattern": NOT_BLANK} if required else {**rule, "nullable": True}

    card = {
        "type": "object",
        "description": "Unknown fields are ignored; a missing or null optional field is empty."
                       " englishExample must hold a cloze such as {{c1::word}}.",
        "required": [name for name, (required, _) in card_fields.items() if required],
        "properties": {name: field(name, required, longest)
                       for name, (required, longest) in card_fields.items()},
    }
    card["properties"]["onDuplicate"] = {
        "type": "string", "enum": list(RULES), "default": RULES[0],
        "description": "refuse: answer 409 (and make no card) when a note or an unfinished"
                       " task already holds the word (case and spacing aside)"}
    job = {
        "type": "object",
        "required": ["taskId", "status", "createdAt", "startedAt", "completedAt", "progress",
                     "attempts", "result", "error"],
        "properties": {
            "taskId": TASK_ID,
            "status": {"type": "string", "enum": list(jobs.STATUSES)},
            "createdAt": {"type": "string", "format": "date-time"},
            "startedAt": TIME,
            "completedAt": TIME,
            "progress": {"type": "object", "required": ["current", "total", "step"],
                         "properties": {"current": {"type": "integer"},
                                        "total": {"type": "integer"},
                                        "step": {"type": "string"}}},
            "attempts": {"type": "integer"},
            "result": {"type": "object", "nullable": True,
                       "description": "on success: the note made",
                       "properties": {"noteId": {"type": "integer"},
                                      "cardIds": {"type": "array", "items": {"type": "integer"}},
                                      "deck": {"type": "string"},
                                      "tags": {"type": "array", "items": {"type": "string"}},
                                      "audio": {"type": "object", "nullable": True},
                                      "warning": {"type": "string", "nullable": True},
                                      "synced": {"type": "boolean"},
                                      "syncedAt": TIME}},
            "error": {"type": "object", "nullable": True,
                      "description": "on failure: what went wrong and what to do"
                                     " (type Cancelled for a cancelled task)",
                      "required": ["type", "message"],
                      "properties": {"type": {"type": "string"},
                                     "message": {"type": "string"}}},
        },
    }
    accepted = {
        "type": "object", "required": ["taskId", "status", "statusUrl", "createdAt"],
        "properties": {"taskId": TASK_ID, "status": {"type": "string"},
                       "statusUrl": {"type": "string"},
                       "createdAt": {"type": "string", "format": "date-time"},
                       "message": {"type": "string",
                                   "description": "?async=false: why it answers before the"
                                                  " job is done"}},
    }
    return {
        # One schema for every refusal, so that no answer matches two shapes.
        "Error": {"type": "object", "required": ["message"],
                  "properties": {"message": {"type": "string"},
                                 "errors": {"type": "object",
                                            "description": "a bad card: field name -> why it"
                                                           " is refused",
                                            "additionalProperties": {"type": "string"}},
                                 "taskId": {**TASK_ID, "description": "409: the task made"
                                            " with this Idempotency-Key"},
                                 "noteIds": {"type": "array", "items": {"type": "integer"},
                                             "description": "409 (onDuplicate refuse): the"
                                                            " notes holding the word"},
                                 "taskIds": {"type": "array", "items": TASK_ID,
                                             "description": "409 (onDuplicate refuse): the"
                                                            " unfinished tasks holding it"}}},
        "Throttled": {"type": "object", "required": ["message", "retryAfter"],
                      "properties": {"message": {"type": "string"},
                                     "retryAfter": {"type": "integer", "minimum": 0,
                                                    "description": "seconds, as Retry-After"}}},
        "Card": card,
        "CardOptions": card_options_schema(audio_hosts),
        "JobStatus": job,
        "Accepted": accepted,
        "Replayed": {"allOf": [accepted, job],
                     "description": "the task first made with this Idempotency-Key"},
        "Finished": {
            "type": "object", "required": ["status", "taskId", "task"],
            "description": "?async=false: the job's result fields (status ok), or its failure",
            "properties": {"status": {"type": "string", "enum": ["ok", "failure"]},
                           "taskId": TASK_ID, "task": _ref("JobStatus"),
                           "message": {"type": "string"}, "noteId": {"type": "integer"},
                           "cardIds": {"type": "array", "items": {"type": "integer"}}}},
        "NoteList": {
            "type": "object", "required": ["word", "notes"],
            "properties": {
                "word": {"type": "string"},
                "notes": {"type": "array", "description": "oldest first", "items": {
                    "type": "object",
                    "required": ["noteId", "deck", "sentence", "created", "taskId"],
                    "properties": {
                        "noteId": {"type": "integer"},
                        "deck": {"type": "string", "description": "of its first card"},
                        "sentence": {"type": "string",
                                     "description": "its Text field, HTML as in the note"},
                        "created": {"type": "string", "format": "date-time"},
                        "taskId": {**TASK_ID, "nullable": True,
                                   "description": "the task that made it, while ankisync"
                                                  " remembers it"}}}}}},
        "Tokens": {"type": "object", "required": ["accessToken", "refreshToken"],
                   "properties": {"accessToken": {"type": "string", "description": "JWT"},
                                  "refreshToken": {"type": "string", "description": "JWT"}}},
        "TaskList": {"type": "object", "required": ["tasks", "next"],
                     "properties": {"tasks": {"type": "array", "items": {"allOf": [
                         _ref("JobStatus"),
                         {"type": "object", "required": ["kind", "word", "sentence"],
                          "properties": {"kind": {"type": "string",
                                                  "description": "cloze, or ankiconnect"},
                                         "word": {"type": "string"},
                                         "sentence": {"type": "string"}}}]}},
                                    "next": {**TASK_ID, "nullable": True,
                                             "description": "pass as ?before= for the next page"}}},
        "Health": {
            "type": "object", "required": ["status", "worker", "queue", "jobs", "sync", "tts"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "version": {"type": "string", "description": "of ankisync (version.py)"},
                "worker": {"type": "object", "properties": {
                    "alive": {"type": "boolean"}, "pid": {"type": "integer", "nullable": True},
                    "ready": {"type": "boolean", "description": "warmed up: the voice's "
                              "client built, the collection open, the first sync tried"}}},
                "queue": {"type": "object", "additionalProperties": {"type": "integer"}},
                "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
                "sync": {"type": "object", "properties": {
                    "loggedIn": {"type": "boolean"}, "endpoint": {"type": "string"},
                    "lastSyncAt": TIME,
                    "lastOutcome": {"type": "string", "nullable": True},
                    "lastError": {"type": "string", "nullable": True}}},
                "tts": {"type": "string"},
                "voice": {"type": "string", "nullable": True,
                          "description": "the voice new cards are spoken in; null: no audio"},
            }},
        "DailyStats": {
            "type": "object", "required": ["days", "utcOffset"],
            "properties": {
                "utcOffset": {"type": "integer"},
                "days": {"type": "array", "description": "oldest first, today last",
                         "items": {"type": "object", "required": ["date", "cards", "failures"],
                                   "properties": {"date": {"type": "string", "format": "date"},
                                                  "cards": {"type": "integer", "minimum": 0},
                                                  "failures": {"type": "integer",
                                                               "minimum": 0}}}}}},
    }


def _link(operation_id):
    """An OpenAPI link: the taskId of this answer, given to another operation."""
    return {"operationId": operation_id, "parameters": {"taskId": "$response.body#/taskId"}}


TASK_LINKS = {"status": _link("getTask"), "cancel": _link("cancelTask"),
              "retry": _link("retryTask")}
# Optional query parameters the server reads as absent when sent empty (?before=)
EMPTY_IS_ABSENT = {"required": False, "allowEmptyValue": True}


def operations(max_body):
    """path -> method -> operation, for every route the app has but the preflights."""
    secured = [{"accessToken": []}, {"bearer": []}]
    task = {"name": "taskId", "in": "path", "required": True, "schema": TASK_ID}
    return {
        "/": {"get": {
            "operationId": "index", "summary": "is the server up", "security": [],
            "responses": {"200": _json({"type": "object", "required": ["status"],
                                        "properties": {"status": {"type": "string"}}}, "up")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "security": [],
            "summary": "Prometheus metrics, with ANKISYNC_METRICS=on: from this machine, or"
                       " with Authorization: Bearer <ANKISYNC_METRICS_KEY> or an access token",
            "responses": {"200": {"description": "Prometheus text format 0.0.4", "content": {
                              "text/plain": {"schema": {"type": "string"}}}},
                          "401": _error("from another machine, without the metrics key"),
                          "404": _error("metrics are off (ANKISYNC_METRICS)")}}},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "200 when the API and the worker both run",
            "security": [],
            "responses": {"200": _json({"type": "object", "required": ["status"],
                                        "properties": {"status": {"type": "string"}}}, "up"),
                          "503": _json({"type": "object", "required": ["status", "message"],
                                        "properties": {"status": {"type": "string"},
                                                       "message": {"type": "string"}}},
                                       "the worker is not running")}}},
        "/api/v1/openapi.json": {"get": {
            "operationId": "openapi", "summary": "this document", "security": [],
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")}}},
        "/api/v1/login": {"post": {
            "operationId": "login", "summary": "trade the API key for a pair of tokens",
            "security": [],
            "requestBody": _body({"type": "object", "required": ["key"],
                                  "properties": {"key": {"type": "string"}}}, max_body),
            "responses": {"201": _json(_ref("Tokens"), "the tokens"), **BAD_BODY,
                          "401": _error("no key sent"), "403": _error("wrong key"),
                          **THROTTLED}}},
        "/api/v1/refresh": {"post": {
            "operationId": "refresh",
            "summary": "trade a refresh token for a new pair (each works once)", "security": [],
            "requestBody": _body({"type": "object", "required": ["refreshToken"],
                                  "properties": {"refreshToken": {"type": "string"}}}, max_body),
            "responses": {"201": _json(_ref("Tokens"), "the new tokens"), **BAD_BODY,
                          "401": _error("refresh token missing, invalid, expired, or used"
                                        " before (which revokes the whole login)"),
                          **THROTTLED}}},
        "/api/v1/health": {"get": {
            "operationId": "health", "summary": "worker, queue and sync state",
            "security": secured,
            "responses": {"200": _json(_ref("Health"), "the state"), **AUTH}}},
        "/api/v1/clozeNotes": {"post": {
            "operationId": "addClozeNote", "summary": "make a cloze card (in the background)",
            "security": secured,
            "parameters": [
                {"name": "async", "in": "query", "required": False,
                 "description": "false, 0 or no: wait for the job and answer its outcome",
                 "schema": {"type": "string", "default": "true"}},
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "description": "the same key with the same card answers the first task;"
                                " with another card, 409",
                 "schema": {"type": "string", "maxLength": 200}}],
            "requestBody": _body({"allOf": [_ref("Card"), _ref("CardOptions")]}, max_body),
            "responses": {
                "202": {**_json(_ref("Accepted"), "the job is queued: poll statusUrl (with"
                                " ?async=false: the job is not finished yet, because it is"
                                " being retried or too many requests already wait)",
                                {"Location": {"schema": {"type": "string"},
                                              "description": "the statusUrl"}}),
                        "links": TASK_LINKS},
                "200": {**_json({"oneOf": [_ref("Replayed"), _ref("Finished")]},
                                "the task of an earlier request with this Idempotency-Key, or"
                                " with ?async=false the finished job"),
                        "links": TASK_LINKS},
                "400": _json({"anyOf": [ERROR, _ref("Finished")]},
                             "a bad card (each bad field named in errors), a bad body, or"
                             " with ?async=false a note Anki refused (the Finished fields)"),
                **AUTH,
                "409": _error("this Idempotency-Key was used with another card; or with"
                              " onDuplicate refuse, the word has a note (noteIds) or an"
                              " unfinished task (taskIds)"),
                "413": BAD_BODY["413"], "415": BAD_BODY["415"],
                "429": _json(_ref("Throttled"), "too many cards from this login in a short"
                             " time, or too many waiting: try again later", RETRY_AFTER),
                "502": _json(_ref("Finished"), "?async=false: the job failed"),
                "504": _json(_ref("Finished"), "?async=false: the job timed out"),
                "507": _error("the disk is full: the card was not stored")}}},
        "/api/v1/notes": {"get": {
            "operationId": "findNotes",
            "summary": "the notes that already hold a word (case and spacing aside)",
            "security": secured,
            "parameters": [
                {"name": "word", "in": "query", "required": True,
                 "schema": {"type": "string", "minLength": 1, "maxLength": LONGEST_WORD,
                            "pattern": NOT_BLANK}}],
            "responses": {"200": _json(_ref("NoteList"), "the notes, maybe none"),
                          "400": _error("word missing, blank or too long"), **AUTH}}},
        "/api/v1/tasks": {"get": {
            "operationId": "listTasks", "summary": "recent tasks, newest first",
            "security": secured,
            "parameters": [
                {"name": "status", "in": "query", **EMPTY_IS_ABSENT,
                 "description": "only tasks in this state; empty: all",
                 "schema": {"type": "string", "enum": list(jobs.STATUSES)}},
                {"name": "limit", "in": "query", **EMPTY_IS_ABSENT,
                 "description": "tasks per page; empty: 20",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                {"name": "before", "in": "query", **EMPTY_IS_ABSENT,
                 "description": "a taskId from `next`: the page after it; empty: the first page",
                 "schema": TASK_ID}],
            "responses": {"200": _json(_ref("TaskList"), "a page of tasks"),
                          "400": _error("bad status, limit or before"), **AUTH,
                          "404": _error("the before task is unknown")}}},
        "/api/v1/tasks/{taskId}": {
            "parameters": [task],
            "get": {"operationId": "getTask", "summary": "a task's status",
                    "security": secured,
                    "responses": {"200": _json(_ref("JobStatus"), "the task"), **AUTH,
                                  **UNKNOWN_TASK}},
            "delete": {"operationId": "cancelTask", "summary": "cancel a task that has not"
                       " started", "security": secured,
                       "responses": {
                           "200": _json(_ref("JobStatus"),
                                        "cancelled: status failure, error type Cancelled"),
                           **AUTH, **UNKNOWN_TASK,
                           "409": _error("the task has started or finished")}}},
        "/api/v1/stats/daily": {"get": {
            "operationId": "dailyStats",
            "summary": "cards made and tasks failed per day (cancelled ones aside)",
            "security": secured,
            "parameters": [
                {"name": "days", "in": "query", **EMPTY_IS_ABSENT,
                 "description": "how many days, today included; empty: 30",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 366, "default": 30}},
                {"name": "utcOffset", "in": "query", **EMPTY_IS_ABSENT,
                 "description": "minutes the days' clock is east of UTC; empty: 0 (UTC)",
                 "schema": {"type": "integer", "minimum": -720, "maximum": 840, "default": 0}}],
            "responses": {"200": _json(_ref("DailyStats"), "one entry per day"),
                          "400": _error("bad days or utcOffset"), **AUTH}}},
        **status_page(),
        "/api/v1/tasks/{taskId}/retry": {
            "parameters": [task],
            "post": {"operationId": "retryTask", "summary": "run a failed task again",
                     "security": secured,
                     "responses": {"202": _json(_ref("JobStatus"), "queued again"), **AUTH,
                                   **UNKNOWN_TASK, "409": _error("the task has not failed")}}},
    }


def status_page():
    """The status page's routes (statuspage.py): files for a browser, not JSON."""
    files = {kind: {"schema": {"type": "string"}}
             for kind in ("text/html", "text/javascript", "text/css")}
    unchanged = {"description": "If-None-Match named this version (its ETag)"}
    page = {"200": {"description": "the page", "content": {"text/html": files["text/html"]}},
            "304": unchanged}
    return {
        "/ui": {"get": {"operationId": "statusPageFolder", "summary": "to /ui/",
                        "security": [],
                        "responses": {"301": {"description": "the page is at /ui/",
                                              "headers": {"Location": {
                                                  "required": True,
                                                  "schema": {"type": "string"}}}}}}},
        "/ui/": {"get": {"operationId": "statusPage", "security": [],
                         "summary": "the status page (it signs in with the API key)",
                         "responses": page}},
        "/ui/{name}": {"get": {
            "operationId": "statusPageFile", "summary": "a file of the status page",
            "security": [],
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "description": "index.html, app.js or style.css",
                            "schema": {"type": "string", "pattern": "^[^/]+$"}}],
            "responses": {"200": {"description": "the file", "content": files},
                          "304": unchanged,
                          "404": _error("not a file of the status page")}}},
    }


def preflight(path):
    """A CORS preflight: answered for the route, whatever task id is in the path, so
    that a browser goes on to the real request and can read its JSON 404."""
    headers = {name: {"required": name != "Access-Control-Allow-Origin",
                      "schema": {"type": "string"}}
               for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                            "Access-Control-Allow-Headers")}
    operation = {"operationId": "preflight" + "".join(
                     word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z]+", path[8:])),
                 "summary": "CORS preflight", "security": [],
                 "responses": {"204": {"description": "the allowed methods and headers",
                                       "headers": headers}}}
    if "{taskId}" in path:
        operation["parameters"] = [{
            "name": "taskId", "in": "path", "required": True,
            "description": "any path segment: the id is not looked at",
            "schema": {"type": "string", "pattern": "^[^/]+$"}}]
        operation["responses"]["404"] = _error("no such route (a taskId with a slash)")
    return operation


HOST_REFUSED = "the Host header is not a name this server answers to (DNS rebinding guard)"


def document(card_fields, max_body, audio_hosts=()):
    """The whole OpenAPI 3 document, as a dict ready for JSON; audio_hosts:
    ANKISYNC_AUDIO_URL_HOSTS, which wordAudioUrl must name."""
    paths = operations(max_body)
    for path, item in paths.items():
        if path.startswith("/api/v1/"):
            item["options"] = preflight(path)
        for method, operation in item.items():
            if method == "parameters":
                continue
            answers = operation["responses"]
            if "403" in answers:  # login's wrong key
                answers["403"] = _error(f"{answers['403']['description']}; or {HOST_REFUSED}")
            elif path == "/metrics":
                answers["403"] = _error(f"a web page's request (Origin sent); or {HOST_REFUSED}")
            else:
                answers["403"] = _error(HOST_REFUSED)
            answers.setdefault("413", BAD_BODY["413"])
    return {
        "openapi": "3.0.3",
        "info": {"title": "ankisync", "version": __version__,
                 "description": "Turns a word and an example sentence into an Anki cloze card"
                                " with audio. Every error is JSON {\"message\": ...}; 404 and"
                                " 405 for unknown routes and methods."},
        "paths": paths,
        "security": [{"accessToken": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "accessToken": {"type": "apiKey", "in": "header", "name": "x-access-token",
                                "description": "the accessToken from /api/v1/login"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas(card_fields, audio_hosts),
        },
    }
