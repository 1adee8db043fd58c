"""ankiweb.py (with notes.py) against a real local Anki sync server; no mocks.
The rules for one note, with no sync, are in test_notes.py.

Uses conftest.py's session-wide `sync_server` and its fresh `account` per test.
"""

import http.server
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import ankiweb
import errors
import notes
from anki_server import download_collection, media_files, notes_in, upload_collection

DECK = "English Vocabulary"

CARD = {
    "word": "extraordinary",
    "partOfSpeech": "adjective",
    "guideWord": "SPECIAL",
    "englishDefinition": "very unusual, special, or surprising",
    "definitionTranslation": "außergewöhnlich",
    "cefrLevel": "B2",
    "code": "",
    "englishExample": "He told the {{c1::extraordinary}} story.",
    "exampleTranslation": "Er erzählte die außergewöhnliche Geschichte.",
}


@pytest.fixture
def col(tmp_path):
    collection = ankiweb.open_collection(tmp_path / "local" / "collection.anki2")
    yield collection
    collection.close()


def write_clips(col, stem):
    """Two small 'MP3' files in the media folder, as the TTS step leaves them."""
    names = (f"{stem}-word.mp3", f"{stem}-text.mp3")
    for name in names:
        (Path(col.media.dir()) / name).write_bytes(b"ID3" + name.encode() * 20)
    return names


class Jobs:
    """The owner's job table in miniature: what reapply re-adds."""

    def __init__(self):
        self.cards = {}
        self.reapplied = 0

    def add(self, col, job_id, card=CARD, stem=None):
        word_clip, text_clip = write_clips(col, stem or job_id)
        self.cards[job_id] = (card, word_clip, text_clip)
        return notes.add_card(col, job_id, card, DECK, word_clip, text_clip)

    def reapply(self, col):
        self.reapplied += 1
        for job_id, (card, word_clip, text_clip) in self.cards.items():
            if not notes.has_note(col, job_id):
                notes.add_card(col, job_id, card, DECK, word_clip, text_clip)


def hkey_for(server, user):
    return ankiweb.login(user, "pass", server.url)["hkey"]


def test_first_sync_to_empty_server_uploads_note_and_media(sync_server, account, col, tmp_path):
    jobs = Jobs()
    note_id, card_ids = jobs.add(col, "job-1")
    assert len(card_ids) == 1

    result = ankiweb.sync(col, hkey_for(sync_server, account), sync_server.url, jobs.reapply)

    assert result == {"outcome": "uploaded", "new_endpoint": None, "media": "synced"}
    assert jobs.reapplied == 0
    other = download_collection(tmp_path / "other", sync_server.url, account, "pass")
    try:
        [note] = notes_in(other)
        assert note["guid"] == notes.note_guid("job-1")
        assert note["notetype"] == "Custom Cloze"
        assert note["deck"] == DECK
        assert note["fields"] == {
            "Text": CARD["englishExample"],
            "Word": CARD["word"],
            "TextTranslation": CARD["exampleTranslation"],
            "EnDefinition": CARD["englishDefinition"],
            "DefinitionTranslation": CARD["definitionTranslation"],
            "PartOfSpeech": CARD["partOfSpeech"],
            "CefrLevel": CARD["cefrLevel"],
            "Code": "",
            "GuideWord": CARD["guideWord"],
            "DefinitionAudio": "[sound:job-1-word.mp3]",
            "TextAudio": "[sound:job-1-text.mp3]",
        }
        notetype = other.models.by_name("Custom Cloze")
        assert other.models.field_names(notetype) == list(notes.FIELDS)
        assert {"job-1-word.mp3", "job-1-text.mp3"} <= media_files(other)
    finally:
        other.close()
    # the local collection is still open and usable after the full upload
    assert notes.has_note(col, "job-1")


def test_server_with_other_clients_notes_is_downloaded_and_ours_reapplied(
        sync_server, account, col, tmp_path):
    desktop = ankiweb.open_collection(tmp_path / "desktop" / "collection.anki2")
    basic = desktop.new_note(desktop.models.by_name("Basic"))
    basic["Front"], basic["Back"] = "front", "back"
    desktop.add_note(basic, notes.ensure_deck(desktop, "Default"))
    Jobs().add(desktop, "desktop-job", dict(CARD, englishExample="A {{c1::desk}} job."))
    upload_collection(desktop, sync_server.url, account, "pass")
    desktop_guids = {note["guid"] for note in notes_in(desktop)}
    desktop.close()

    jobs = Jobs()
    jobs.add(col, "our-job")
    result = ankiweb.sync(col, hkey_for(sync_server, account), sync_server.url, jobs.reapply)

    assert result["outcome"] == "downloaded"
    assert jobs.reapplied == 1
    # col is still the caller's working collection, and nothing is left to send
    assert notes.has_note(col, "our-job")
    again = ankiweb.sync(col, hkey_for(sync_server, account), sync_server.url, jobs.reapply)
    assert again["outcome"] == "no_changes"
    check = download_collection(tmp_path / "check", sync_server.url, account, "pass")
    try:
        guids = [note["guid"] for note in notes_in(check)]
        assert sorted(guids) == sorted(desktop_guids | {notes.note_guid("our-job")})
        assert {"our-job-word.mp3", "our-job-text.mp3"} <= media_files(check)
    finally:
        check.close()


def test_second_card_after_first_sync_syncs_normally(sync_server, account, col, tmp_path):
    jobs = Jobs()
    hkey = hkey_for(sync_server, account)
    jobs.add(col, "first")
    assert ankiweb.sync(col, hkey, sync_server.url, jobs.reapply)["outcome"] == "uploaded"
    assert ankiweb.sync(col, hkey, sync_server.url, jobs.reapply)["outcome"] == "no_changes"

    jobs.add(col, "second", dict(CARD, englishExample="The {{c1::second}} one."))
    result = ankiweb.sync(col, hkey, sync_server.url, jobs.reapply)

    assert result["outcome"] == "normal"
    check = download_collection(tmp_path / "check", sync_server.url, account, "pass")
    try:
        guids = {note["guid"] for note in notes_in(check)}
        assert guids == {notes.note_guid("first"), notes.note_guid("second")}
        assert {"second-word.mp3", "second-text.mp3"} <= media_files(check)
    finally:
        check.close()


def test_wrong_password_is_auth_error(sync_server, account):
    with pytest.raises(errors.SyncAuthError, match="refused username/password"):
        ankiweb.login(account, "wrong", sync_server.url)


def test_bad_session_key_is_auth_error(sync_server, account, col):
    notes.add_card(col, "job-a", CARD, DECK, None, None)
    with pytest.raises(errors.SyncAuthError, match=r"\./run\.sh login USERNAME"):
        ankiweb.sync(col, "not-a-session-key", sync_server.url, Jobs().reapply)


@pytest.mark.slow
def test_stopped_server_is_unavailable_then_sync_recovers(sync_server, account, col):
    jobs = Jobs()
    hkey = hkey_for(sync_server, account)
    jobs.add(col, "job-b")
    sync_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(errors.SyncUnavailable, match="ANKISYNC_SYNC_ENDPOINT") as caught:
            ankiweb.sync(col, hkey, sync_server.url, jobs.reapply, io_timeout=3)
        assert sync_server.url in str(caught.value)
        with pytest.raises(errors.SyncUnavailable):
            ankiweb.login(account, "pass", sync_server.url)
        assert time.monotonic() - started < 10
    finally:
        sync_server.start()
    assert ankiweb.sync(col, hkey, sync_server.url, jobs.reapply)["outcome"] == "uploaded"


@pytest.mark.slow
def test_hanging_server_times_out(col):
    # accepts connections (the kernel does, via the backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        started = time.monotonic()
        with pytest.raises(errors.SyncUnavailable):
            ankiweb.sync(col, "hkey", url, Jobs().reapply, io_timeout=2)
        assert time.monotonic() - started < 15


@pytest.fixture
def failing_server():
    """A plain HTTP server answering every request with the status it is given."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(self.server.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("status, error", [
    (500, errors.SyncUnavailable),  # passes by itself: retry
    (503, errors.SyncUnavailable),
    (409, errors.SyncUnavailable),  # another client is syncing
    (501, errors.PermanentError),   # "your Anki version is too old"
    (403, errors.SyncAuthError),
])
def test_server_errors_are_mapped(failing_server, col, status, error):
    failing_server.status = status
    with pytest.raises(error) as caught:
        ankiweb.sync(col, "hkey", failing_server.url, Jobs().reapply, io_timeout=3)
    assert type(caught.value) is error
    if error is not errors.SyncAuthError:
        assert failing_server.url in str(caught.value)


def test_login_while_collection_is_open_here_and_in_another_process(sync_server, account, tmp_path):
    path = tmp_path / "held" / "collection.anki2"
    held_here = ankiweb.open_collection(path)
    try:
        assert ankiweb.login(account, "pass", sync_server.url)["hkey"]
    finally:
        held_here.close()

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from anki.collection import Collection
            col = Collection({str(path)!r})
            print("open", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        session = ankiweb.login(account, "pass", sync_server.url)
        assert session["hkey"] and session["endpoint"] == sync_server.url
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
