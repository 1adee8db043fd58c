"""The one way ankisync talks to its SQLite file (shared with Huey's queue).

WAL lets the web process read while the worker writes; writes take the lock up
front (BEGIN IMMEDIATE) because a deferred read-then-write transaction fails at
once with "database is locked" when Huey holds the lock.
"""

import errno
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from contextlib import contextmanager

from errors import DamagedFile

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# Page cache of each connection, KiB (SQLite's default: 2,000). The web process holds
# one connection per waitress thread (16), and each fills its cache with the job
# table's pages that /health scans: +3 MiB of RSS per 200 cards, up to 32 MiB. The
# file's pages stay in the OS's cache, and in WAL mode a connection drops its whole
# cache whenever another process writes anyway.
CACHE_KIB = 256
# Open connections, per thread: a cache of handles, never of data, keyed by pid
# and path (a connection must not cross a fork). It stays module-level because
# every caller (web app, tasks, Worker, CLI) names its file by path, and a
# connection object threaded through every jobs/auth/db call would buy nothing.
_local = threading.local()


def connect(path):
    """A connection per process, thread and path, in autocommit mode, WAL on."""
    key = (os.getpid(), str(path))  # a connection must not cross a fork
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    conn = conns.get(key)
    if conn is None:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        conns[key] = conn
    return conn


@contextmanager
def write(path):
    """A short write transaction that takes the write lock first."""
    conn = connect(path)
    try:
        # inside the try: a task timeout (an alarm) may land as BEGIN returns, and
        # a transaction left open would hold the file's write lock for good
        conn.execute("BEGIN IMMEDIATE")
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:  # e.g. disk full: left open, the next BEGIN would fail
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class GroupCommit:
    """Writes from many threads share one transaction, and so one fsync.

    Each caller hands in a function of the connection. The first caller to
    find no commit in progress leads: it runs every waiting function, each in
    its own savepoint (one failing undoes only itself), commits once, and
    wakes the others. A caller's function returns or raises for it alone.
    Under load this turns N fsyncs into one, and the threads no longer queue
    on SQLite's busy handler, which sleeps.
    """

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._waiting = []
        self._busy = False

    def run(self, write):
        item = {"write": write, "done": threading.Event(), "lead": False}
        with self._lock:
            self._waiting.append(item)
            if not self._busy:
                self._busy = item["lead"] = True
        if not item["lead"]:
            item["done"].wait()
        if item["lead"]:
            with self._lock:
                batch, self._waiting = self._waiting, []
            try:
                self._commit(batch)
            finally:
                with self._lock:
                    if self._waiting:  # the next caller in line leads the next batch
                        self._waiting[0]["lead"] = True
                        self._waiting[0]["done"].set()
                    else:
                        self._busy = False
        if "error" in item:
            raise item["error"]
        return item["result"]

    def _commit(self, batch):
        try:
            with write(self.path) as conn:
                for item in batch:
                    conn.execute("SAVEPOINT one")
                    try:
                        item["result"] = item["write"](conn)
                        conn.execute("RELEASE one")
                    except Exception as error:
                        conn.execute("ROLLBACK TO one")
                        conn.execute("RELEASE one")
                        item["error"] = error
        except Exception as error:  # the commit itself failed: nothing was written
            for item in batch:
                item.pop("result", None)
                item["error"] = error
        for item in batch:
            item["lead"] = False
            item["done"].set()


# Each process's GroupCommit per file: like _local, a cache keyed by pid and path.
_groups = {}


def group(path):
    """The GroupCommit of this process for path."""
    key = (os.getpid(), str(path))
    if key not in _groups:
        _groups.setdefault(key, GroupCommit(path))
    return _groups[key]


STATE_SCHEMA = "CREATE TABLE IF NOT EXISTS ankisync_state (key TEXT PRIMARY KEY, value TEXT)"


def get_state(path, key, default=None):
    """A small named fact that outlives a process (last sync time, last error)."""
    row = connect(path).execute("SELECT value FROM ankisync_state WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def set_state(path, **values):
    with write(path) as conn:
        conn.executemany("INSERT OR REPLACE INTO ankisync_state VALUES (?, ?)", values.items())


def check_file(path, fix):
    """Stop with the file's name and fix when the SQLite file at path is damaged.

    Read-only, so a refused or failing start changes nothing. A file held by
    another process (Anki's collection, opened exclusively) is not checked.
    """
    if not path.exists():
        return
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        # Anki's collection indexes by its own collation (Unicode case folding)
        conn.create_collation("unicase", _unicase)
        try:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            return
        problem = str(error)
    except sqlite3.DatabaseError as error:  # "file is not a database" and the like
        problem = str(error)
    else:
        problem = None if rows == ["ok"] else "; ".join(rows[:3])
    if problem:
        raise DamagedFile(f"{path} is damaged ({problem}): {fix}")


def _unicase(a, b):
    a, b = a.casefold(), b.casefold()
    return (a > b) - (a < b)


# --- the disk under the data dir ------------------------------------------------

FREE_FLOOR = 1 << 20  # bytes: below this the disk counts as full (a card needs ~100 kB)


def free_bytes(path):
    status = os.statvfs(path)
    return status.f_bavail * status.f_frsize


def disk_full(path):
    return free_bytes(path) < FREE_FLOOR


def is_disk_full(error):
    """Whether error (or what caused it) is the disk running out of space."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if "database or disk is full" in str(error) or "No space left on device" in str(error):
            return True  # anki's backend reports SQLite's and the OS's words
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(path):
    return (f"the disk holding the data dir {path.resolve()} is full ({free_bytes(path)} bytes"
            f" free): free some space on it (`du -sh {path.resolve()}/*` shows what ankisync"
            " keeps; old backups and logs are the usual culprits) or move ANKISYNC_DATA_DIR to a"
            " bigger disk. Cards accepted before are kept, and ankisync carries on by itself"
            " once there is room")


class DiskGuard:
    """The worker's view of the disk: whether to take work now, logged once per change.

    Full while free space is under FREE_FLOOR, or for a while after a write
    failed for lack of space. When room comes back, on_room() runs once (the
    caller re-enqueues the jobs a failed write left behind).
    """

    PAUSE = 5  # seconds before trying again after a write failed for lack of space

    def __init__(self, path, on_room):
        self.path, self.on_room = path, on_room
        self.full_since, self.until = None, 0.0

    def full(self):
        if self.full_since is not None and time.monotonic() < self.until:
            return True
        if disk_full(self.path):
            self._enter("free space is under %d bytes" % FREE_FLOOR)
            return True
        if self.full_since is not None:
            log.warning("disk has room again after %.0fs: the worker carries on",
                        time.monotonic() - self.full_since)
            self.full_since = None
            self.on_room()
        return False

    def hit(self, error):
        """A write failed for lack of space."""
        self._enter(str(error))
        self.until = time.monotonic() + self.PAUSE

    def _enter(self, why):
        if self.full_since is None:
            self.full_since = time.monotonic()
            log.warning("disk full (%s): the worker pauses, jobs wait. %s", why,
                        disk_full_message(self.path))
