"""The one way ankisync talks to its SQLite file (shared with Huey's queue).

WAL lets the web process read while the worker writes; writes take the lock up
front (BEGIN IMMEDIATE) because a deferred read-then-write transaction fails at
once with "database is locked" when Huey holds the lock.
"""

import os
import sqlite3
import threading
from contextlib import contextmanager

BUSY_TIMEOUT_MS = 10_000
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
        conns[key] = conn
    return conn


@contextmanager
def write(path):
    """A short write transaction that takes the write lock first."""
    conn = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
