"""Miscellaneous actions: version, permission, sync, multi, reflection."""

import config
import db
from ankiconnect.dispatch import ACTIONS, API_VERSION, ActionError, action, handle
from errors import AnkisyncError


@action
def version(context):
    return API_VERSION


@action
def requestPermission(context, origin="", allowed=False):
    # no one to ask on a headless server: the origin allowlist decides
    if not allowed:
        return {"permission": "denied"}
    return {"permission": "granted", "requireApikey": bool(context.settings.ankiconnect_key),
            "version": API_VERSION}


@action
def sync(context):
    """Sync now and say what happened (the add-on answers null; we never do)."""
    try:
        if not context.worker.sync():
            raise ActionError("sync: not logged in: run `./run.sh login USERNAME`"
                              " (or ./run.sh login USERNAME) first")
    except AnkisyncError as error:
        raise ActionError(f"sync failed: {error}") from None
    path = config.db_path(context.settings)
    outcome = db.get_state(path, "last_sync_outcome")
    return {"synced": True, "outcome": outcome,
            "reapplied": outcome == "downloaded"}


@action
def multi(context, actions, key=None):
    # each action keeps its own version (default 4), as in the add-on; one
    # without a key of its own borrows the key of the request that carried it
    return [handle(context, {"key": key, **one} if isinstance(one, dict) else one)
            for one in actions]


@action
def apiReflect(context, scopes=None, actions=None):
    if not isinstance(scopes, list):
        raise ActionError("scopes has invalid value")
    if not (actions is None or isinstance(actions, list)):
        raise ActionError("actions has invalid value")
    result = {"scopes": []}
    if "actions" in scopes:
        result["scopes"].append("actions")
        names = ACTIONS if actions is None else [a for a in actions if a in ACTIONS]
        result["actions"] = list(names)
    return result
