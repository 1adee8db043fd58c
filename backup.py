"""Backups taken while ankisync runs, and restoring them into a stopped one.

A backup is two files named for one UTC time, in the backups folder
(ANKISYNC_BACKUP_DIR, else DATA_DIR/backups; the folder 0700, the files 0600):

    20261130T063700Z-jobs.db            the job database (SQLite's online backup)
    20261130T063700Z-collection.colpkg  the collection (Anki's own backup)

Whoever holds the collection takes both under its lock. Notes are added, and
their jobs marked added, only under that lock, so the copies agree: each note
in the collection's copy has its job, marked added, in the job database's (a
job still waiting in it runs again after a restore and finds or adds its note
by guid). While the worker runs, it takes them:
`./run.sh backup` asks it through the queue and waits for its answer in the
job database; the worker's own timer (ANKISYNC_BACKUP_INTERVAL) calls the same
function. With the worker stopped, the command takes the worker's lock and
opens the collection itself.

A backup is written only when the job database's rows or the collection
changed since the last one (last-backup.json in the folder records what that
was): asked again and again, an idle service writes nothing.

Media (collection.media) is left out, as Anki's own backups leave it out: the
clips are written once and never changed, each backup would otherwise carry
all of them again, and every synced clip is on the sync server, whose media
sync brings them back to a restored data dir (README: Backup and restore).
Restore leaves collection.media as it is.

Worker process and command line only: anki is imported where it is used.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import config
import db
import files
import locks
from errors import AlreadyRunning, AnkisyncError, BackupFailed, ConfigError, DamagedFile

log = logging.getLogger(__name__)

STAMP = "%Y%m%dT%H%M%SZ"
NAME = re.compile(r"(\d{8}T\d{6}Z)-(jobs\.db|collection\.colpkg)")
JOBS, COLLECTION = "jobs.db", "collection.colpkg"
LAST = "last-backup.json"  # the last backup written here: its time and what it held
STATE_KEY = "backup-answer:"  # + request id: the worker's answer to `./run.sh backup`


def prepare(folder):
    """The backups folder, made readable by its owner only when ankisync makes it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


MEANINGFUL = ("ankisync_jobs", "ankisync_hourly")


def snapshot_jobs(path):
    """A consistent in-memory copy of the job database, and a digest of its rows.

    The copy is SQLite's online backup: one read transaction, while the API and
    the worker go on writing. The digest is of the rows that make a backup worth
    keeping (MEANINGFUL), not the pages: Huey's queue (this backup's own request, a
    periodic sync rescheduling itself), the state an idle service keeps writing
    (last sync, alerts sent) and rotated login tokens change without a card or
    note changing, and would otherwise rotate the useful backups away.
    """
    if not path.exists():
        raise BackupFailed(f"{path} does not exist: nothing to back up (is ANKISYNC_DATA_DIR"
                           " right? ./run.sh starts ankisync and makes it)")
    copy = sqlite3.connect(":memory:")
    source = sqlite3.connect(str(path), timeout=db.BUSY_TIMEOUT_MS / 1000)
    try:
        source.backup(copy)
    finally:
        source.close()
    digest = hashlib.sha256()
    for table in MEANINGFUL:
        # (a table an older data dir lacks counts as empty)
        if copy.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            for row in copy.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                digest.update(repr(row).encode())
    return copy, digest.hexdigest()


def read_last(folder):
    try:
        last = json.loads((folder / LAST).read_text())
    except (OSError, ValueError):
        return {}
    complete = all((folder / f"{last.get('time')}-{kind}").is_file() for kind in (JOBS, COLLECTION))
    return last if complete else {}


def new_stamp(folder):
    """Now, as a name no backup in folder has yet (two within a second: the next second)."""
    while True:
        stamp = time.strftime(STAMP, time.gmtime())
        if not any(folder.glob(f"{stamp}-*")):
            return stamp
        time.sleep(0.05)


def take(col, db_path, folder, keep, reopen):
    """Back up the collection col (held by the caller) and the job database into folder.

    Returns {"time", "files", "folder"}, or None when nothing changed since the
    last backup there. reopen() closes and opens the collection again, giving it.
    """
    try:
        prepare(folder)
        return _take(col, db_path, folder, keep, reopen)
    except AnkisyncError:
        raise
    except Exception as error:  # the one place a backup's failure gets its message
        raise BackupFailed(_reason(error, folder)) from error


def _reason(error, folder):
    if db.is_disk_full(error):
        return (f"the disk holding {folder} is full: free some space there, or give another"
                " folder (ANKISYNC_BACKUP_DIR, or ./run.sh backup DIR); older backups are kept")
    if isinstance(error, OSError):
        return (f"cannot write the backup into {folder} ({error.strerror or error}): give a"
                " folder that the user running ankisync can write to (ANKISYNC_BACKUP_DIR, or"
                " ./run.sh backup DIR)")
    log.warning("backup into %s failed", folder, exc_info=error)
    return f"{type(error).__name__}: {error} (the log has the details)"


def _take(col, db_path, folder, keep, reopen):
    copy, digest = snapshot_jobs(db_path)
    try:
        last, mod = read_last(folder), col.mod
        if last.get("jobs") == digest and last.get("collection_mod") == mod:
            log.debug("backup: nothing changed since %s", last["time"])
            return None
        stamp = new_stamp(folder)
        colpkg, jobs_file = folder / f"{stamp}-{COLLECTION}", folder / f"{stamp}-{JOBS}"
        if last.get("collection_mod") == mod:  # only jobs changed: the same collection
            _link_or_copy(folder / f"{last['time']}-{COLLECTION}", colpkg)
        else:
            _anki_backup(col, folder, colpkg, reopen)
        try:
            _write_jobs(copy, jobs_file)
        except BaseException:  # half a backup is none: it would count as one when rotating
            colpkg.unlink(missing_ok=True)
            raise
    finally:
        copy.close()
    files.write_whole(folder / LAST, json.dumps(
        {"time": stamp, "jobs": digest, "collection_mod": mod}).encode())
    rotate(folder, keep)
    log.info("backup written: %s and %s", colpkg, jobs_file)
    return {"time": stamp, "files": [str(colpkg), str(jobs_file)], "folder": str(folder)}


def _anki_backup(col, folder, target, reopen):
    """Anki's own backup of col, as target. Anki names, and thins, its backups in a folder:
    a folder of its own keeps its thinning away from ours."""
    scratch = folder / ".anki"
    scratch.mkdir(mode=0o700, exist_ok=True)
    for left in scratch.glob("*.colpkg"):  # a backup cut short
        left.unlink()
    if not col.create_backup(backup_folder=str(scratch), force=True, wait_for_completion=True):
        # Anki skips a collection unchanged since its last backup in this session (that
        # one went elsewhere, or was deleted): a new session takes one
        col = reopen()
        if not col.create_backup(backup_folder=str(scratch), force=True,
                                 wait_for_completion=True):
            raise BackupFailed("Anki made no backup of the collection; the log has details")
    made = max(scratch.glob("*.colpkg"), key=lambda path: path.stat().st_mtime)
    os.chmod(made, 0o600)
    with open(made, "rb") as file:
        os.fsync(file.fileno())
    os.replace(made, target)


def _link_or_copy(source, target):
    try:
        os.link(source, target)  # no second copy on disk
    except OSError:
        files.write_whole(target, source.read_bytes())


def _write_jobs(copy, target):
    """The copy as a file: compacted (VACUUM INTO), so deleted rows are not carried along."""
    part = target.with_name(f".{target.name}.part")
    part.unlink(missing_ok=True)
    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        copy.execute("VACUUM INTO ?", (str(part),))
        with open(part, "rb") as file:
            os.fsync(file.fileno())
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def rotate(folder, keep):
    """Delete all but the newest `keep` backups in folder (only files named like ours)."""
    stamps = sorted({match[1] for path in folder.iterdir()
                     if (match := NAME.fullmatch(path.name))}, reverse=True)
    for stamp in stamps[keep:]:
        for kind in (JOBS, COLLECTION):
            (folder / f"{stamp}-{kind}").unlink(missing_ok=True)
        log.info("backup %s deleted (ANKISYNC_BACKUP_KEEP=%s)", stamp, keep)


# --- in the worker ------------------------------------------------------------------


def take_in_worker(worker, folder, keep, stop=None):
    """The worker's backup: under the collection's lock, so no job or AnkiConnect action
    changes it meanwhile, and the sync lock (taken first, as everywhere), as a backup may
    reopen the collection, which a sync waiting for its media still uses. stop, when
    set, means the worker is closing: nothing is done."""
    with worker.sync_lock, worker.lock:
        if stop is not None and stop.is_set():
            return None

        def reopen():
            worker.drop_collection()
            return worker.collection()

        return take(worker.collection(), worker.db, folder, keep, reopen)


def start_schedule(worker, settings):
    """Back up every ANKISYNC_BACKUP_INTERVAL seconds from the worker, when something
    changed; the Event returned stops it. A thread of the worker's own, not a Huey
    periodic task: those write to the queue every time, and an idle service writes nothing."""
    stop = threading.Event()
    folder = config.backup_dir(settings)

    def loop():
        while not stop.wait(settings.backup_interval):
            try:
                take_in_worker(worker, folder, settings.backup_keep, stop)
            except Exception as error:  # the next one may work: the worker carries on
                log.warning("scheduled backup into %s failed: %s", folder, error,
                            exc_info=not isinstance(error, AnkisyncError))

    threading.Thread(target=loop, name="backup", daemon=True).start()
    log.info("backups every %gs into %s, when something changed (keeping %s)",
             settings.backup_interval, folder, settings.backup_keep)
    return stop


def answer(db_path, request, result):
    """The worker's answer to the command that asked for a backup."""
    db.set_state(db_path, **{STATE_KEY + request: json.dumps(result)})


# --- the command line -----------------------------------------------------------------


def backup(settings, folder, ask_worker):
    """`./run.sh backup [DIR]`: the result of take(), or None when nothing changed.

    ask_worker(folder, request, expires) queues the backup for the running worker.
    """
    folder = Path(folder).absolute() if folder else config.backup_dir(settings).absolute()
    if not config.db_path(settings).exists():  # before anything is made there
        raise BackupFailed(f"{config.db_path(settings)} does not exist: nothing to back up (is"
                           " ANKISYNC_DATA_DIR right?)")
    fd, holder = locks.try_lock(settings, "worker", "backup")
    if fd is None and holder[-1] in ("backup", "restore"):  # no worker to ask
        raise BackupFailed(f"another ./run.sh {holder[-1]} (pid {holder[0]}) is at work on this"
                           " data dir: try again when it is done")
    if fd is None:
        return _through_worker(settings, folder, ask_worker)
    try:  # the worker is stopped, and cannot start while this holds its lock
        return _take_alone(settings, folder)
    finally:
        os.close(fd)


def _take_alone(settings, folder):
    from anki.collection import Collection
    path = config.collection_path(settings)
    if not path.exists():
        raise BackupFailed(f"{path} does not exist: nothing to back up (is ANKISYNC_DATA_DIR"
                           " right?)")
    try:
        holder = {"col": Collection(str(path))}
    except Exception as error:  # e.g. Anki desktop has it open
        raise BackupFailed(f"cannot open the collection {path} ({error}): is another program"
                           " using it?") from error

    def reopen():
        holder["col"].close()
        holder["col"] = Collection(str(path))
        return holder["col"]

    try:
        return take(holder["col"], config.db_path(settings), folder, settings.backup_keep, reopen)
    finally:
        holder["col"].close()


def _through_worker(settings, folder, ask_worker):
    """Queue the backup for the running worker and wait for its answer in the job database:
    it runs next (a high priority), once the batch in hand is done."""
    path = config.db_path(settings)
    request = uuid.uuid4().hex
    wait = 2 * settings.task_timeout + 60  # the batch in hand, then the backup
    ask_worker(str(folder), request, wait)  # expires: never runs after we gave up
    key = STATE_KEY + request
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            found = db.get_state(path, key)
            if found is not None:
                result = json.loads(found)
                if "error" in result:
                    raise BackupFailed(f"the worker could not back up into {folder}:"
                                       f" {result['error']}")
                return result["backup"]
            time.sleep(0.1)
    finally:
        with db.write(path) as conn:
            conn.execute("DELETE FROM ankisync_state WHERE key = ?", (key,))
    raise BackupFailed(f"the running worker did not take the backup within {wait:g} s: is it"
                       " stuck? `./run.sh status` shows it; its log says what it is doing")


def describe_error(error):
    """What the command that asked is told of a failed backup."""
    if isinstance(error, AnkisyncError):
        return str(error)
    return f"{type(error).__name__}: {error} (the worker's log has the details)"


# --- restore ------------------------------------------------------------------------


def restore(settings, files):
    """`./run.sh restore FILE...` into a stopped service: the job database, the
    collection, or both. Every file is checked before anything is replaced; what
    is replaced is moved aside into DATA_DIR/replaced-TIME. Returns that folder."""
    if not files:
        raise ConfigError("name the files to restore, e.g. ./run.sh restore"
                          " data/backups/20261130T063700Z-*")
    config.ensure_data_dir(settings)
    held = []
    try:
        for role in ("api", "worker"):
            fd, holder = locks.try_lock(settings, role, "restore")
            if fd is None and holder[-1] in ("backup", "restore"):
                raise AlreadyRunning(f"a ./run.sh {holder[-1]} (pid {holder[0]}) is at work on"
                                     " this data dir: try again when it is done. Nothing was"
                                     " restored")
            if fd is None:
                raise AlreadyRunning(
                    f"ankisync is running on the data dir {settings.data_dir.resolve()} (its"
                    f" {role.replace('api', 'API')} has pid {holder[0]}): stop it first (sudo"
                    " systemctl stop ankisync, docker compose stop, or Ctrl-C where ./run.sh"
                    " runs), then run ./run.sh restore again. Nothing was restored")
            held.append(fd)
        return _restore(settings, [Path(name) for name in files])
    finally:
        for fd in held:
            os.close(fd)


def kind_of(path):
    """JOBS or COLLECTION, from what the file holds (not its name)."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        raise DamagedFile(f"{path}: cannot read it ({error.strerror}). Nothing was restored")
    if head.startswith(b"SQLite format 3\0"):
        return JOBS
    if head.startswith(b"PK\x03\x04"):
        return COLLECTION
    raise DamagedFile(f"{path} is not a backup made by ./run.sh backup (neither a job database"
                      " nor an Anki collection package). Nothing was restored")


def _check_jobs(path, staged):
    """Copy the job database to staged, checked: ours, and whole."""
    shutil.copyfile(path, staged)
    os.chmod(staged, 0o600)
    try:
        conn = sqlite3.connect(str(staged))
        # Anki's collation, so that a collection given by mistake is named as such
        conn.create_collation("unicase", lambda a, b: (a.casefold() > b.casefold())
                              - (a.casefold() < b.casefold()))
        try:
            ours = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ankisync_jobs'"
                                ).fetchone()
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        rows, ours = [str(error)], True
    if not ours:
        raise DamagedFile(f"{path} is an SQLite file, but not ankisync's job database (a"
                          " backup's is named TIME-jobs.db). Nothing was restored")
    if rows != ["ok"]:
        raise DamagedFile(f"{path} is damaged ({'; '.join(rows[:3])}): restore an older"
                          " backup. Nothing was restored")


def _check_collection(path, staging):
    """Unpack the collection package into staging with Anki's importer, which checks it."""
    from anki._backend import RustBackend
    from anki.errors import AnkiException
    try:
        RustBackend().import_collection_package(
            col_path=str(staging / "collection.anki2"), backup_path=str(path.resolve()),
            media_folder=str(staging / "media"), media_db=str(staging / "media.db2"))
    except AnkiException as error:
        raise DamagedFile(f"{path} is not a collection package Anki can read ({error})."
                          " Nothing was restored") from None
    os.chmod(staging / "collection.anki2", 0o600)


def _restore(settings, files):
    kinds = {}
    for path in files:
        kind = kind_of(path)
        if kind in kinds:
            raise ConfigError(f"{kinds[kind]} and {path} are both {kind} files: give one job"
                              " database and/or one collection package (of the same time)")
        kinds[kind] = path
    data_dir = settings.data_dir
    staging = data_dir / f".restore-{uuid.uuid4().hex[:8]}"
    aside = data_dir / ("replaced-" + time.strftime(STAMP, time.gmtime()))
    try:
        try:
            staging.mkdir(mode=0o700)
            if JOBS in kinds:
                _check_jobs(kinds[JOBS], staging / "ankisync.db")
            if COLLECTION in kinds:
                _check_collection(kinds[COLLECTION], staging)
            aside.mkdir(mode=0o700, exist_ok=True)
        except OSError as error:
            why = error.strerror or error
            raise BackupFailed(f"cannot prepare the restore in {data_dir} ({why})."
                               " Nothing was restored") from error
        # every file is good: now the data dir changes
        try:
            if JOBS in kinds:
                _put(config.db_path(settings), staging / "ankisync.db", aside)
            if COLLECTION in kinds:
                _put(config.collection_path(settings), staging / "collection.anki2", aside)
                _add_media(staging / "media", config.media_dir(settings))
        except OSError as error:
            raise BackupFailed(f"the restore failed halfway ({error.strerror or error}): the"
                               f" files it replaced are in {aside}; move them back into"
                               f" {data_dir} before starting ankisync") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for kind, path in kinds.items():
        log.info("restored the %s from %s", "job database" if kind == JOBS else "collection",
                 path)
    if aside.exists() and not any(aside.iterdir()):
        aside.rmdir()
    if aside.exists():
        log.info("the files it replaced are in %s (delete it once all is well)", aside)
        return aside
    return None


def _put(target, staged, aside):
    """Move target (and its SQLite companions) into aside, then staged into its place."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        old = target.with_name(target.name + suffix)
        if old.exists():
            os.replace(old, aside / old.name)
    os.replace(staged, target)


def _add_media(unpacked, media):
    """Media a package carried (one exported from Anki with media), where missing."""
    if not unpacked.is_dir():
        return
    media.mkdir(exist_ok=True)
    for path in unpacked.iterdir():
        if path.is_file() and not (media / path.name).exists():
            shutil.move(path, media / path.name)
