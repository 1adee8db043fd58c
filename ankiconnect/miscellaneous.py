"""Miscellaneous actions: version, permission, sync, multi, reflection, the one
profile, and packages exported and imported in the data dir's packages folder."""

import logging
import os

from anki.collection import (DeckIdLimit, ExportAnkiPackageOptions, ImportAnkiPackageOptions,
                             ImportAnkiPackageRequest)

import config
import db
from ankiconnect.dispatch import ACTIONS, API_VERSION, ActionError, action, handle
from ankiconnect.graphical import NO_WINDOW
from errors import AnkisyncError

log = logging.getLogger(__name__)


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
        # an action that can only say it needs a window is not offered
        served = [name for name in ACTIONS if name not in NO_WINDOW]
        names = served if actions is None else [a for a in actions if a in served]
        result["actions"] = list(names)
    return result


@action
def getProfiles(context):
    return [context.settings.ankiconnect_profile]


@action
def getActiveProfile(context):
    return context.settings.ankiconnect_profile


@action
def loadProfile(context, name):
    # one collection, one profile: it is always loaded; another name is unknown
    return name == context.settings.ankiconnect_profile


@action
def reloadCollection(context):
    """Nothing to reload: the worker's open collection is the only copy in use."""
    context.collection()


def _package(context, path):
    """The package file a client names, inside the packages folder, or the refusal.

    Only a bare file name ending in .apkg: no folder, no "..", no absolute path, and
    not a symlink (which could point anywhere). The refusal is the same whether or
    not such a file exists, so it tells nothing about the disk."""
    folder = config.packages_dir(context.settings)
    refusal = ActionError(f"path is not allowed: {path!r:.200}: give a file name ending in"
                          f" .apkg, which is kept in {folder}")
    if (not isinstance(path, str) or not path.endswith(".apkg") or path != os.path.basename(path)
            or "\\" in path or "\0" in path or path.startswith(".")):
        raise refusal
    file = folder / path
    if file.is_symlink() or os.path.dirname(os.path.realpath(file)) != os.path.realpath(folder):
        raise refusal
    return file


@action
def exportPackage(context, deck, path, includeSched=False):
    file = _package(context, path)
    if not isinstance(includeSched, bool):
        raise ActionError("includeSched must be true or false")
    with context.worker.lock:
        col = context.collection()
        found = col.decks.by_name(deck) if isinstance(deck, str) else None
        if found is None:
            return False
        file.parent.mkdir(mode=0o700, exist_ok=True)
        options = ExportAnkiPackageOptions(with_scheduling=includeSched,
                                           with_deck_configs=includeSched,
                                           with_media=True, legacy=True)
        count = col.export_anki_package(out_path=str(file), options=options,
                                        limit=DeckIdLimit(found["id"]))
    log.info("AnkiConnect: exported %s notes of %r to %s", count, deck, file)
    return True


@action
def importPackage(context, path):
    file = _package(context, path)
    if not file.is_file():
        raise ActionError(f"package was not found: {path}: put it in"
                          f" {config.packages_dir(context.settings)} first")
    request = ImportAnkiPackageRequest(package_path=str(file), options=ImportAnkiPackageOptions(
        with_scheduling=True, with_deck_configs=True))
    with context.worker.lock:
        answer = context.collection().import_anki_package(request)
    log.info("AnkiConnect: imported %s: %s new notes, %s updated", path,
             len(answer.log.new), len(answer.log.updated))
    context.sync_soon()
    return True
