"""A nudge from whoever queues a task to the worker waiting for one.

Without it the worker finds a new task at its next look at the queue, up to
0.1 s later, and looks ten times a second while idle. With it, the worker
waits on a socket in the data dir and starts within a millisecond of the
nudge, and looks at the queue only every IDLE_WAIT seconds on its own (for a
nudge lost while it restarted). A datagram, sent without waiting: a lost one
costs only that delay, so the sender never fails for it.
"""

import contextlib
import logging
import os
import select
import socket

log = logging.getLogger(__name__)

IDLE_WAIT = 0.5  # seconds; also how long a stopping worker may wait here


def nudge(path) -> None:
    """Tell the worker listening at path that a task is queued (if one listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # no worker listening, or nudged already
            sock.sendto(b"!", os.fspath(path))


class Listener:
    """The worker's end: a datagram socket at path, readable by its owner only."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a worker that was killed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        except OSError:
            self.sock.close()
            raise
        finally:
            os.umask(old)
        self.sock.setblocking(False)

    def wait(self, timeout: float = IDLE_WAIT) -> bool:
        """Wait up to timeout for a nudge; whether one came. Takes every nudge waiting."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        while True:
            try:
                self.sock.recv(16)
            except BlockingIOError:
                return bool(readable)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def listen(path):
    """A Listener at path, or None when no socket can be made there (the worker polls)."""
    try:
        return Listener(path)
    except OSError as error:  # a path over 107 bytes, a filesystem without sockets
        log.info("the worker polls the queue instead of waiting for a nudge (%s: %s)",
                 path, error)
        return None
