"""Logging into and syncing with AnkiWeb or a self-hosted Anki sync server."""

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from anki._backend import RustBackend, Translations
from anki.collection import Collection
from anki.errors import (BackendError, Interrupted, InvalidInput, NetworkError, SyncError,
                         SyncErrorKind)
from anki.sync import SyncAuth, SyncOutput
from anki.sync_pb2 import SyncLoginRequest

import errors

log = logging.getLogger(__name__)

ANKIWEB = "AnkiWeb"


def _server_name(endpoint: str | None) -> str:
    return f"the sync server at {endpoint}" if endpoint else ANKIWEB


def _one_line(error: Exception) -> str:
    # anki's messages carry Unicode isolation marks and blank lines, made for dialogs
    return " ".join(str(error).replace("\u2068", "").replace("\u2069", "").split())


def _is_server_trouble(error: SyncError, tr: Translations) -> bool:
    # The Python side only knows AUTH and OTHER; among OTHER, a server error
    # (HTTP 500/502/503/504) and a conflict (another client is syncing) pass
    # by themselves. Anki tells them apart only by their translated message.
    return str(error) in (tr.sync_server_error(), tr.sync_conflict())


SESSION_REFUSED = ("The sync server refused the saved session: "
                   "run `./run.sh login USERNAME` again")


@contextlib.contextmanager
def _sync_errors(endpoint: str | None, tr: Translations,
                 auth_message: str = SESSION_REFUSED) -> Iterator[None]:
    """Turn anki's sync errors into ours, each saying what to do."""
    try:
        yield
    except SyncError as error:
        if error.kind == SyncErrorKind.AUTH:
            raise errors.SyncAuthError(auth_message.format(error=_one_line(error))) from error
        if _is_server_trouble(error, tr):
            raise errors.SyncUnavailable(
                f"{_server_name(endpoint)} had a problem ({_one_line(error)}); "
                "the sync will be tried again") from error
        raise errors.PermanentError(
            f"{_server_name(endpoint)} refused to sync: {_one_line(error)}") from error
    except NetworkError as error:
        raise errors.SyncUnavailable(
            f"could not sync with {_server_name(endpoint)}: {_one_line(error)} (check the "
            "network, and ANKISYNC_SYNC_ENDPOINT if you use your own sync server)") from error
    except InvalidInput as error:
        if not endpoint:
            raise
        raise errors.PermanentError(
            f"{endpoint!r} is not a usable sync server address ({_one_line(error)}): "
            "fix ANKISYNC_SYNC_ENDPOINT") from error
    except BackendError as error:
        if type(error) is BackendError:
            # a message from the server for a person (AnkiWeb's SERVER_MESSAGE)
            raise errors.PermanentError(
                f"{_server_name(endpoint)} refused to sync: {_one_line(error)}") from error
        raise


def login(username: str, password: str, endpoint: str | None) -> dict:
    """Log in and return {"hkey", "endpoint"}; the collection is not touched.

    Login needs no open collection, so it works while the worker holds it.
    """
    endpoint = endpoint or None
    backend = RustBackend()
    request = SyncLoginRequest(username=username, password=password, endpoint=endpoint)
    refused = "the sync server refused username/password: {error}"
    with _sync_errors(endpoint, Translations(weakref.ref(backend)), refused):
        auth = backend.sync_login(request)
    return {"hkey": auth.hkey, "endpoint": endpoint}


# Anki asks SQLite for a page cache of 40 MB, which keeps every page a search read:
# 18 MB more in the worker on 50,000 notes. At SQLite's default of 2 MB, the file's
# pages stay in the OS's cache, which gives them back when memory is short; a search
# of every note is under 1 ms slower.
COLLECTION_CACHE_KIB = 2000


def _small_cache(col: Collection) -> Collection:
    col.db.execute(f"pragma cache_size = -{COLLECTION_CACHE_KIB}")
    return col


def open_collection(path: str | os.PathLike) -> Collection:
    """Open the collection file at path, creating it (and its folder) when missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _small_cache(Collection(str(path)))


def _full_sync(col: Collection, auth: SyncAuth, upload: bool) -> None:
    col.close_for_full_sync()
    try:
        # server_usn=None: media is synced afterwards, by us, and waited for
        col.full_upload_or_download(auth=auth, server_usn=None, upload=upload)
    finally:
        # the backend reopens the collection whatever happened; the Python side follows
        col.reopen(after_full_sync=True)
        _small_cache(col)  # a new connection, at Anki's size again


def _abort_media_sync(col: Collection) -> None:
    col.abort_media_sync()
    # The aborted run reports Interrupted once it has stopped, or the error it
    # stopped with first (a new server's "Please sync again"): either way it is
    # discarded, and the run started after it reports its own.
    with contextlib.suppress(Interrupted, SyncError, NetworkError):
        while col.media_sync_status().active:
            time.sleep(0.05)


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _holds_open(path: str) -> bool:
    """Whether this process has the file at path open."""
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                return True
    return False


def _start_media_sync(col: Collection, auth: SyncAuth, limit: float = 1.0) -> None:
    """Start the media sync; return once it no longer needs the collection.

    Anki's media sync thread first takes the collection's mutex, for a moment,
    to open the media database; sync_collection holds that mutex until the
    collection sync ends. Called right after col.sync_media(), it nearly always
    won, and the media sync waited: its first request reached the server after
    the collection sync's last in 60 of 63 syncs. So wait until the thread holds
    its own handle on the media database (or is gone: a failure, raised later by
    media_sync_status), then the two run side by side. Linux's /proc shows both;
    elsewhere this only starts the sync.
    """
    try:
        before = _threads()
    except FileNotFoundError:  # no /proc
        col.sync_media(auth)
        return
    col.sync_media(auth)
    started = _threads() - before  # empty when a media sync was still running
    # as /proc shows it: the real path, through any symlink in the data dir's
    media_db = os.path.realpath(Path(col.path).with_suffix(".media.db2"))
    deadline = time.monotonic() + limit
    while started & _threads() and not _holds_open(media_db):
        if time.monotonic() > deadline:  # stuck somewhere: go on, as before
            log.warning("the media sync had not started after %.1f s", limit)
            return
        time.sleep(0.0002)


def _settle_media_sync(col: Collection, timeout: float) -> None:
    """Let the media sync that ran beside a collection sync now ending in a full sync (or
    a move to another server) end by itself; its error is dropped, as the media sync
    started after the full sync reports its own.

    Not aborted: against a server that lacks files, an aborted run may have sent its new
    files, and so moved its mark to the server's, without the count check that ends a
    run; the next run then had nothing to do, and files were missing on the server while
    the jobs said synced. Ending by itself, the run fails that check, and Anki sends
    every file again. Past the timeout it is aborted, and every file's state is sent
    again to be sure.
    """
    deadline = time.monotonic() + timeout
    with contextlib.suppress(Interrupted, SyncError, NetworkError):
        while col.media_sync_status().active:
            if time.monotonic() > deadline:
                _abort_media_sync(col)
                col.media.force_resync()
                return
            time.sleep(0.01)


def _wait_for_media(col: Collection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.01
    # media_sync_status() raises the media sync's own error when it failed
    while col.media_sync_status().active:
        if time.monotonic() > deadline:
            _abort_media_sync(col)
            raise errors.SyncUnavailable(
                f"the media sync did not finish within {timeout:.0f} s; "
                "the files left go up with the next sync")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _has_no_cards(col: Collection) -> bool:
    return col.db.scalar("select not exists (select 1 from cards)") == 1


def _local_sync_marks(col: Collection) -> tuple:
    # mod (last change) and ls (last sync) move only when a sync moved data
    return tuple(col.db.first("select mod, ls from col"))


def sync(col: Collection, hkey: str, endpoint: str | None,
         reapply: Callable[[Collection], None], io_timeout: int = 30,
         media_timeout: float = 120.0, wait_media: bool = True, upload: bool = False) -> dict:
    """Sync the collection and its media; return what happened.

    {"outcome": "no_changes"|"normal"|"uploaded"|"downloaded",
     "new_endpoint": str|None, "media": "synced"}. After a full download,
    reapply(col) re-adds what the server's copy lacks, and that goes up with
    a second normal sync. col stays open and usable in every case.
    io_timeout bounds each network wait; media_timeout the whole media sync
    (files not sent by then go up next time). With wait_media False the media
    sync is only started: the caller waits with wait_for_media, and need not
    keep others from the collection meanwhile. With upload, a full sync the
    server asks for is a full upload: for the caller that synced normally, then
    changed the schema, and so holds all the server had.
    """
    endpoint = endpoint or None
    auth = SyncAuth(hkey=hkey, endpoint=endpoint, io_timeout_secs=io_timeout)
    started = time.monotonic()
    with _sync_errors(endpoint, col.tr):
        # Media first, so that it runs alongside the collection sync: both are
        # mostly round trips. A full sync or a new endpoint restarts it below.
        _start_media_sync(col, auth)
        before = _local_sync_marks(col)
        out = col.sync_collection(auth, sync_media=False)
        new_endpoint = out.new_endpoint if out.HasField("new_endpoint") else None
        restart_media = bool(new_endpoint) or out.required in (
            SyncOutput.FULL_UPLOAD, SyncOutput.FULL_DOWNLOAD, SyncOutput.FULL_SYNC)
        if restart_media:
            _settle_media_sync(col, media_timeout)
        if new_endpoint:
            log.info("the sync server moved this account to %s", new_endpoint)
            auth.endpoint = new_endpoint
        if out.server_message:
            log.warning("message from %s: %s", _server_name(endpoint), out.server_message)
        log.debug("sync_collection: %s", SyncOutput.ChangesRequired.Name(out.required))
        if out.required in (SyncOutput.NO_CHANGES, SyncOutput.NORMAL_SYNC):
            # sync_collection has done the normal sync itself
            outcome = "normal" if _local_sync_marks(col) != before else "no_changes"
        elif out.required == SyncOutput.FULL_UPLOAD:
            # the server's collection is empty: ours must go up, or cards never arrive
            _full_sync(col, auth, upload=True)
            outcome = "uploaded"
        elif out.required == SyncOutput.FULL_SYNC and (upload or _has_no_cards(col)):
            # upload: our schema change, made right after a normal sync, so ours holds
            # everything. No cards here: Anki asks both ways only when both sides or
            # neither hold cards, so the server has none either, and what was made
            # here before the first note (a client's deck, its note type) must go up
            if not upload:
                log.warning("%s asks for a full sync and neither side holds a card yet:"
                            " uploading this collection over the server's (its decks and"
                            " note types, if any, are replaced)", _server_name(endpoint))
            _full_sync(col, auth, upload=True)
            outcome = "uploaded"
        else:
            # FULL_DOWNLOAD or FULL_SYNC: the server's copy wins; what it lacks
            # of ours is re-applied below and goes up with a normal sync
            _full_sync(col, auth, upload=False)
            outcome = "downloaded"

    if outcome == "downloaded":
        reapply(col)
        with _sync_errors(endpoint, col.tr):
            again = col.sync_collection(auth, sync_media=False)
        if again.required not in (SyncOutput.NO_CHANGES, SyncOutput.NORMAL_SYNC):
            raise errors.PermanentError(
                f"{_server_name(endpoint)} asked for a second full sync right after a "
                "full download; sync Anki on another device, then retry")
    log.info("collection sync: %s in %.2f s", outcome, time.monotonic() - started)

    if restart_media:
        with _sync_errors(endpoint, col.tr):
            # media written before a full download stays on disk and goes up here
            col.sync_media(auth)
    if not wait_media:
        return {"outcome": outcome, "new_endpoint": new_endpoint, "media": "started",
                "auth": auth}
    wait_for_media(col, endpoint, media_timeout, auth)
    log.info("sync with media done in %.2f s", time.monotonic() - started)
    return {"outcome": outcome, "new_endpoint": new_endpoint, "media": "synced"}


def wait_for_media(col: Collection, endpoint: str | None, timeout: float = 120.0,
                   auth: SyncAuth | None = None) -> None:
    """Wait for the media sync that sync() started; its failure raised as ours.

    Given the sync's auth, a media sync the server answers with "Please sync
    again" is started afresh once: that is what a move to another sync server
    (whose media log does not match ours) gives, and what Anki's own advice fixes.
    """
    with _sync_errors(endpoint, col.tr):
        try:
            _wait_for_media(col, timeout)
        except SyncError as error:
            if auth is None or str(error) != col.tr.sync_resync_required():
                raise
            log.info("the media sync must start afresh (%s); sending every file's state again",
                     _one_line(error))
            col.media.force_resync()  # forget what was sent where: all is compared anew
            col.sync_media(auth)
            _wait_for_media(col, timeout)
