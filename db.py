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


STATE_SCHEMA = "CREATE TABLE IF NOT EXISTS ankisync_state (key TEXT PRIMARY KEY, value TEXT)"


def get_state(path, key, default=None):
    """A small named fact that outlives a process (last sync time, last error)."""
    row = connect(path).execute("SELECT value FROM ankisync_state WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def set_state(path, **values):
    with write(path) as conn:
        conn.executemany("INSERT OR REPLACE INTO ankisync_state VALUES (?, ?)", values.items())
