"""db.py, the one way to the shared SQLite file: what a write leaves behind when it is cut."""

import signal
import sqlite3
import threading

import pytest

import db


class Alarm(Exception):
    """What a Huey task timeout raises: an exception from a signal handler."""


def test_a_write_cut_while_waiting_for_the_lock_leaves_no_transaction_open(tmp_path):
    path = tmp_path / "shared.db"
    with db.write(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the web process (or Huey) is writing
    holding = threading.Event()

    def release_later():
        # The alarm's handler runs only once SQLite's busy wait returns, as in the
        # worker: the lock comes free, BEGIN returns, and the alarm lands at once.
        holding.wait(1)
        other.execute("ROLLBACK")

    releaser = threading.Thread(target=release_later)
    releaser.start()

    def ring(*_):
        holding.set()
        raise Alarm()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, 0.2)  # lands while BEGIN IMMEDIATE waits
    try:
        with pytest.raises(Alarm):
            with db.write(path) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        releaser.join()
    assert not db.connect(path).in_transaction  # no write lock held for good
    with db.write(path) as conn:  # and the next write works
        conn.execute("INSERT INTO t VALUES (2)")
    assert [row[0] for row in db.connect(path).execute("SELECT x FROM t")] == [2]
