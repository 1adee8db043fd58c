"""A real Anki sync server in a subprocess, and a second client to look at it.

The owner wraps these in pytest fixtures (conftest.py). Everything here uses
anki's own API, not ankisync's, so a test that checks "the card arrived" does
not trust the code it tests.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from anki.collection import Collection
from anki.sync import SyncOutput

START_TIMEOUT = 120.0  # 100 accounts take ~40 s to set up on a loaded 2-core machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class SyncServer:
    """`python -m anki.syncserver` on 127.0.0.1, with one account per user.

    `users` maps username to password; accounts are SYNC_USER1..N. The base
    dir keeps the accounts' collections across stop() and start(), so an
    outage can be simulated on the same port.
    """

    def __init__(self, base: str | os.PathLike, users: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.base = Path(base)
        self.users = users or {"user": "pass"}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.base / "syncserver.log"
        self._process: subprocess.Popen | None = None

    def start(self) -> "SyncServer":
        self.base.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, SYNC_BASE=str(self.base), SYNC_HOST="127.0.0.1",
                   SYNC_PORT=str(self.port))
        for number, (user, password) in enumerate(self.users.items(), start=1):
            env[f"SYNC_USER{number}"] = f"{user}:{password}"
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "anki.syncserver"], env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"sync server exited at start; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sync server did not listen within {START_TIMEOUT} s; "
                                   f"see {self.log_path}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, as with a server gone silent."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> "SyncServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _wait_for_media(col: Collection, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    # media_sync_status() raises the media sync's error, if it had one
    while col.media_sync_status().active:
        if time.monotonic() > deadline:
            raise TimeoutError("media sync did not finish")
        time.sleep(0.02)


def _sync_whole(col: Collection, url: str, username: str, password: str, upload: bool) -> None:
    """Sync col with the server, taking (or giving) the whole collection when asked, then media."""
    auth = col.sync_login(username, password, url)
    auth.io_timeout_secs = 10
    out = col.sync_collection(auth, sync_media=False)
    full = SyncOutput.FULL_UPLOAD if upload else SyncOutput.FULL_DOWNLOAD
    if out.required in (full, SyncOutput.FULL_SYNC):
        col.close_for_full_sync()
        col.full_upload_or_download(auth=auth, server_usn=None, upload=upload)
        col.reopen(after_full_sync=True)
    col.sync_media(auth)
    _wait_for_media(col)


def download_collection(dirpath: str | os.PathLike, url: str, username: str = "user",
                        password: str = "pass") -> Collection:
    """A fresh collection in dirpath holding the server's copy, media included."""
    Path(dirpath).mkdir(parents=True, exist_ok=True)
    col = Collection(str(Path(dirpath) / "collection.anki2"))
    _sync_whole(col, url, username, password, upload=False)
    return col


def upload_collection(col: Collection, url: str, username: str = "user",
                      password: str = "pass") -> None:
    """Make the server hold col (another client's collection), media included."""
    _sync_whole(col, url, username, password, upload=True)


def seed_other_device(dirpath: str | os.PathLike, url: str, username: str, front: str,
                      password: str = "pass") -> None:
    """Another device's collection, with one Basic note, put on the server first."""
    Path(dirpath).mkdir(parents=True, exist_ok=True)
    other = Collection(str(Path(dirpath) / "collection.anki2"))
    note = other.new_note(other.models.by_name("Basic"))
    note["Front"], note["Back"] = front, "kept"
    other.add_note(note, other.decks.id("Default"))
    upload_collection(other, url, username, password)
    other.close()


def notes_in(col: Collection) -> list[dict]:
    """Every note: guid, fields by name, note type name, deck name, tags."""
    notes = []
    for note_id in col.find_notes(""):
        note = col.get_note(note_id)
        decks = {col.decks.name(card.did) for card in note.cards()}
        notes.append({
            "guid": note.guid,
            "fields": dict(note.items()),
            "notetype": note.note_type()["name"],
            "deck": decks.pop() if len(decks) == 1 else sorted(decks),
            "tags": list(note.tags),
        })
    return notes


def media_files(col: Collection) -> set[str]:
    """Names of the files in the collection's media folder."""
    folder = Path(col.media.dir())
    return {path.name for path in folder.iterdir() if path.is_file()}
