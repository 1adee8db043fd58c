"""The data dir's instance locks: one API and one worker per data dir.

Each role ("api", "worker") has a lock file; whoever holds it (flock, for its
process's life) writes there its pid and what it is (the API's address, or a
command's name), so that the one refused can say who holds it.
"""

import fcntl
import os

import config


def try_lock(settings, role, label):
    """(fd, None) when the role's lock was free (now held, label written), else
    (None, [holder's pid, what it is])."""
    path = config.lock_path(settings, role)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split() or ["?", "?"]
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {label}\n".encode(), 0)
    return fd, None
