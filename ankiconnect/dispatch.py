"""The actions' registry and the dispatcher: one decoded request in, the add-on's reply out.

Each action module registers its actions with `@action` (called with the
request's params and a `Context`) or `@collection_action` (called holding the
collection lock, with the open collection). Parameter names are the wire's.
"""

import functools
import hmac
import inspect
import logging

from anki.errors import BackendError

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

    def sync_soon(self):
        """Queue one sync for what an action changed; the change is in either way."""
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
        # unknown extra keys in params are accepted silently, as clients expect
        params = {key: value for key, value in params.items() if key in taken}
    return func(context, **params)


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
