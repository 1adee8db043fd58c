"""The actions' registry and the dispatcher: one decoded request in, the add-on's reply out.

Each action module registers its actions with `@action` (called with the
request's params and a `Context`) or `@collection_action` (called holding the
collection lock, with the open collection). Parameter names are the wire's.
"""

import functools
import hmac
import inspect
import logging
import pprint
import textwrap

from anki.errors import BackendError

import duplicates

log = logging.getLogger(__name__)

API_VERSION = 6
ACTIONS = {}  # action name -> function(context, **params); filled as the modules load


class ActionError(Exception):
    """An expected refusal; its text goes to the client as "error"."""


class Context:
    """What actions may use: the Worker (its collection, lock and settings) and a
    way to queue a sync. Closed when the server stops: a collection the worker
    closed is never reopened by a late action."""

    def __init__(self, worker, queue_sync):
        self.worker, self.settings, self.queue_sync = worker, worker.settings, queue_sync
        self.open = True

    def collection(self):
        if not self.open:
            raise ActionError("collection is not available")
        return self.worker.collection()

    def sync_soon(self, index=True):
        """Queue one sync for what an action changed; the change is in either way.

        index False: the change cannot touch the duplicate index (tags only, or notes
        of other types than the one it holds), so that sync need not compare it all.
        """
        if index:
            duplicates.mark_stale(self.worker.db)  # that sync compares the duplicate index
        try:
            self.queue_sync()
        except Exception:  # the note is in; the next sync will carry it anyway
            log.exception("AnkiConnect: could not queue a sync")


def action(func):
    """Register func(context, **params) under its name."""
    ACTIONS[func.__name__] = func
    return func


def collection_action(func):
    """Register func(col, **params), run holding the collection lock."""
    @functools.wraps(func)
    def run(context, **params):
        with context.worker.lock:
            return func(context.collection(), **params)
    return action(run)


@functools.cache
def _parameters(func):
    """(names it takes, names it needs); None for names when it takes anything."""
    taken, needed = [], []
    for name, parameter in inspect.signature(func).parameters.items():
        if name in ("col", "context"):
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            return None, needed
        taken.append(name)
        if parameter.default is parameter.empty:
            needed.append(name)
    return taken, needed


def _call(context, name, func, params):
    taken, needed = _parameters(func)
    missing = [param for param in needed if param not in params]
    if missing:
        raise ActionError(f"{name}: missing parameter: {', '.join(missing)}")
    if taken is not None:
        # as in the add-on, whose Python call refuses them: a misspelt name must not be
        # silently dropped (a `dat` taken for "no data", a `deleteExisting` typo ignored)
        unknown = [key for key in params if key not in taken]
        if unknown:
            raise ActionError(f"AnkiConnect.{name}() got an unexpected keyword argument"
                              f" '{unknown[0]}'")
    return func(context, **params)


# The add-on checks each request against this schema with jsonschema, and answers
# str(ValidationError): the message, then the schema part and the value that failed.
REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "minLength": 1},
        "version": {"type": "integer"},
        "params": {"type": "object"},
    },
    "required": ["action"],
}
_JSON_TYPES = {"object": dict, "string": str, "integer": int}


def _is(value, kind):
    if isinstance(value, bool):  # JSON true/false is neither a number nor a string
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()  # jsonschema counts 6.0 as an integer
    return isinstance(value, _JSON_TYPES[kind])


def _schema_text(message, keyword, schema_path, schema, instance_path, instance):
    """The text of jsonschema's ValidationError, as the add-on sends it."""
    def block(value):
        return textwrap.indent(pprint.pformat(value, width=72), "    ")
    return (f"{message}\n\nFailed validating {keyword!r} in {schema_path}:\n{block(schema)}"
            f"\n\nOn {instance_path}:\n{block(instance)}")


def schema_error(request):
    """The add-on's error text for a decoded request its schema refuses, else None.

    Of several faults, the one jsonschema's best_match picks: the request's own
    (not an object, no action) before a member's.
    """
    if not _is(request, "object"):
        return _schema_text(f"{request!r} is not of type 'object'", "type", "schema",
                            REQUEST_SCHEMA, "instance", request)
    if "action" not in request:
        return _schema_text("'action' is a required property", "required", "schema",
                            REQUEST_SCHEMA, "instance", request)
    for name, rules in REQUEST_SCHEMA["properties"].items():
        if name not in request:
            continue
        value, where = request[name], f"schema['properties'][{name!r}]"
        if not _is(value, rules["type"]):
            return _schema_text(f"{value!r} is not of type {rules['type']!r}", "type", where,
                                rules, f"instance[{name!r}]", value)
        if "minLength" in rules and len(value) < rules["minLength"]:
            return _schema_text(f"{value!r} should be non-empty", "minLength", where,
                                rules, f"instance[{name!r}]", value)
    return None


def key_ok(settings, key):
    expected = settings.ankiconnect_key
    if not expected:
        return True
    return isinstance(key, str) and hmac.compare_digest(key.encode(), expected.encode())


def handle(context, request, allowed=True, origin=""):
    """The reply to one decoded request: bare result for version <= 4, else {result, error}."""
    if not isinstance(request, dict):
        return {"result": None, "error": "the request must be a JSON object with an action"}
    name = request.get("action", "")
    version = request.get("version", 4)
    if isinstance(version, float) and version.is_integer():  # 6.0 passes the schema
        version = int(version)
    params = request.get("params") or {}
    try:
        if not isinstance(version, int) or not isinstance(params, dict):
            raise ActionError("version must be a number and params an object")
        if name != "requestPermission" and not key_ok(context.settings, request.get("key")):
            raise ActionError("valid api key must be provided")
        func = ACTIONS.get(name) if isinstance(name, str) else None
        if func is None:
            raise ActionError("unsupported action")
        if name == "requestPermission":
            params = {"origin": origin, "allowed": allowed}
        elif name == "multi":
            params = {**params, "key": request.get("key")}
        result = _call(context, name, func, params)
    except ActionError as error:
        return {"result": None, "error": str(error)}
    except BackendError as error:  # e.g. a search Anki cannot parse, an unknown id
        return {"result": None, "error": str(error)}
    except KeyError as error:
        return {"result": None, "error": f"{name}: missing parameter: {error.args[0]}"}
    except Exception as error:
        log.exception("AnkiConnect: %s failed", name)
        return {"result": None, "error": f"{name} failed: {type(error).__name__}: {error}"}
    return result if version <= 4 else {"result": result, "error": None}
