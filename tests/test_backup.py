"""Backups while running and restores into a stopped service, through the CLI and the
real service: the copies open and agree, an idle service writes nothing, a restore
brings back every job and leaves every note on the sync server exactly once."""

import hashlib
import shutil
import sqlite3
import stat
import threading
from pathlib import Path

from helpers import card, wait_for_log, wait_until
from test_faults import assert_exactly_once

import notes


def backup_now(service, *args):
    """`./run.sh backup ARGS` on service's data dir: the files it wrote (none: [])."""
    done = service.cli("backup", *args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return [Path(line) for line in done.stdout.split()]


def open_colpkg(path, where):
    """The collection in a .colpkg, opened by Anki (its own importer unpacks it)."""
    from anki._backend import RustBackend
    from anki.collection import Collection
    where.mkdir()
    RustBackend().import_collection_package(
        col_path=str(where / "collection.anki2"), backup_path=str(path),
        media_folder=str(where / "media"), media_db=str(where / "media.db2"))
    return Collection(str(where / "collection.anki2"))


def jobs_in(path):
    """{job id: row} of a job database file, after SQLite's own integrity check."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall()[0][0] == "ok"
        return {row["id"]: dict(row) for row in conn.execute("SELECT * FROM ankisync_jobs")}
    finally:
        conn.close()


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def files_state(folder):
    """{path: (size, mtime)} of every file under folder."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_backup_during_a_burst_is_consistent_then_idle_writes_nothing_and_rotates(
        make_service, account, tmp_path):
    service = make_service(ANKISYNC_BACKUP_KEEP=3)
    service.sync_login(account)
    posted = []

    def post():  # the API and the worker write while the backup is taken
        for n in range(30):
            status, body = service.post_card(card(n))
            assert status == 202, body
            posted.append(body["taskId"])

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(lambda: len(posted) >= 5, "five cards posted")
    first = backup_now(service)
    poster.join()
    folder = service.data_dir / "backups"
    assert sorted(p.name.split("-", 1)[1] for p in first) == ["collection.colpkg", "jobs.db"]
    assert all(p.parent == folder for p in first), first
    assert mode(folder) == 0o700 and all(mode(p) == 0o600 for p in folder.iterdir()
                                         if p.is_file()), [oct(mode(p)) for p in folder.iterdir()]
    jobs_file = next(p for p in first if p.name.endswith("jobs.db"))
    saved = jobs_in(jobs_file)
    assert saved and set(saved) <= set(posted), saved.keys()
    col = open_colpkg(next(p for p in first if p.name.endswith(".colpkg")), tmp_path / "first")
    try:
        assert col.db.scalar("pragma integrity_check") == "ok"
        guids = set(col.db.list("select guid from notes"))
    finally:
        col.close()
    # taken under the collection's lock: each note in the copy has its job, marked added
    added = {notes.note_guid(job_id) for job_id, job in saved.items() if job["added_at"]}
    assert guids <= added, (len(guids), len(added))

    for task_id in posted:
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    # one more card: a change since the first backup, however far the burst had gone then
    job, _ = service.wait(service.post_card(card(40))[1]["taskId"])
    assert job["status"] == "success", job
    second = backup_now(service)
    col = open_colpkg(next(p for p in second if p.name.endswith(".colpkg")), tmp_path / "second")
    try:
        assert col.note_count() == 31
    finally:
        col.close()
    assert all(job["status"] == "success" for job in
               jobs_in(next(p for p in second if p.name.endswith("jobs.db"))).values())

    # nothing changed since: nothing is written, however often it is asked
    before = files_state(folder)
    for _ in range(2):
        done = service.cli("backup")
        assert done.returncode == 0 and done.stdout == "", done.stderr
        assert "nothing changed since the last backup" in done.stderr, done.stderr
    assert files_state(folder) == before

    # a change each time: a new backup each time, the newest three kept
    made = [first, second]
    for n in range(30, 32):
        job, _ = service.wait(service.post_card(card(n))[1]["taskId"])
        assert job["status"] == "success", job
        made.append(backup_now(service))
    kept = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".json")
    assert kept == sorted(p.name for files in made[-3:] for p in files), kept

    # a folder that cannot be written: said so, by the worker that tried
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    done = service.cli("backup", str(not_a_folder))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot write the backup into {not_a_folder}" in done.stderr, done.stderr


def test_scheduled_backups_write_only_when_something_changed(make_service, tmp_path):
    service = make_service(ANKISYNC_BACKUP_INTERVAL=0.3, ANKISYNC_BACKUP_DIR=tmp_path / "saved")
    job, _ = service.wait(service.post_card(card(1))[1]["taskId"])
    assert job["status"] == "success", job
    wait_for_log(service, "backup written")
    wait_for_log(service, "backup: nothing changed")  # the job's last write is in one
    folder = tmp_path / "saved"
    assert mode(folder) == 0o700
    written = sorted(p.name for p in folder.glob("*Z-*"))
    assert written and all(mode(folder / name) == 0o600 for name in written), written

    # idle: the worker looks every 0.3 s, and writes nothing, anywhere
    before = files_state(service.data_dir), files_state(folder)
    checks = service.logs().count("backup: nothing changed")
    wait_until(lambda: service.logs().count("backup: nothing changed") >= checks + 5,
               lambda: "five idle checks:\n" + service.logs())
    after = files_state(service.data_dir), files_state(folder)
    changed = {path for old, new in zip(before, after) for path in old.keys() | new.keys()
               if old.get(path) != new.get(path)}
    assert not changed, changed

    # a change: the next look writes a backup
    job, _ = service.wait(service.post_card(card(2))[1]["taskId"])
    assert job["status"] == "success", job
    wait_until(lambda: len(list(folder.glob("*Z-*"))) == len(written) + 2,
               lambda: "a backup of the change:\n" + service.logs())


def test_an_idle_service_that_syncs_periodically_writes_no_new_backup(
        make_service, sync_server, account, tmp_path):
    # the periodic sync reschedules itself in Huey's queue and records each sync: that
    # changes the job database's pages, not its cards; no backup is written for it
    service = make_service(ANKISYNC_BACKUP_INTERVAL=0.3, ANKISYNC_SYNC_INTERVAL=0.5,
                           ANKISYNC_BACKUP_DIR=tmp_path / "saved")
    service.sync_login(account)
    job, _ = service.wait(service.post_card(card(1))[1]["taskId"])
    assert job["status"] == "success", job
    wait_for_log(service, "backup written")
    wait_for_log(service, "backup: nothing changed")
    folder = tmp_path / "saved"
    written = sorted(p.name for p in folder.glob("*Z-*"))
    syncs = service.logs().count("synced (")
    wait_until(lambda: service.logs().count("synced (") >= syncs + 3,
               lambda: "three periodic syncs:\n" + service.logs())
    checks = service.logs().count("backup: nothing changed")
    wait_until(lambda: service.logs().count("backup: nothing changed") >= checks + 2,
               lambda: "two more backup checks:\n" + service.logs())
    assert sorted(p.name for p in folder.glob("*Z-*")) == written


def test_restore_refused_while_running_then_brings_back_every_job_and_note(
        make_service, sync_server, account, fake_tts, tmp_path):
    service = make_service()
    service.sync_login(account)
    first = service.wait(service.post_card(card(0))[1]["taskId"])[0]
    assert first["status"] == "success" and first["result"]["synced"], first
    fake_tts.status = 503  # cards wait
    waiting = [service.post_card(card(n))[1]["taskId"] for n in range(1, 4)]
    for task_id in waiting:
        service.wait(task_id, until=("retrying",))
    saved = backup_now(service, str(tmp_path / "saved"))
    fake_tts.status = 200
    for task_id in waiting:  # they reach the server after the backup
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    later = service.wait(service.post_card(card(4))[1]["taskId"])[0]["taskId"]

    jobs_db = service.data_dir / "ankisync.db"
    before = jobs_db.stat().st_ino
    refused = service.cli("restore", *map(str, saved))
    assert refused.returncode == 1, refused.stderr
    assert "is running on the data dir" in refused.stderr and "stop it first" in refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert service.job(later)["status"] == "success"  # the running service is untouched
    assert jobs_db.stat().st_ino == before and not list(service.data_dir.glob("replaced-*"))
    assert service.stop() == 0

    # stopped, the command takes the backup itself
    stopped = backup_now(service, str(tmp_path / "stopped"))
    col = open_colpkg(next(p for p in stopped if p.suffix == ".colpkg"), tmp_path / "look")
    try:
        assert col.note_count() == 5
    finally:
        col.close()

    # a damaged or unknown file is refused, and nothing is replaced
    def data_files():  # the lock files aside: restore holds the locks, and says it does
        return {path.name: digest(path) for path in service.data_dir.iterdir()
                if path.is_file() and path.suffix != ".lock"}

    kept = data_files()
    unknown = tmp_path / "notes.txt"
    unknown.write_text("not a backup")
    colpkg = next(p for p in saved if p.suffix == ".colpkg")
    cut = tmp_path / "cut.colpkg"
    cut.write_bytes(colpkg.read_bytes()[:2000])
    jobs_file = next(p for p in saved if p.suffix == ".db")
    damaged = tmp_path / "damaged-jobs.db"
    damaged.write_bytes(jobs_file.read_bytes()[:100] + b"\x00" * 5000)
    for files, says in (([unknown], "is not a backup made by ./run.sh backup"),
                        ([jobs_file, cut], "not a collection package Anki can read"),
                        ([damaged, colpkg], "is damaged"),
                        ([service.data_dir / "collection.anki2"], "not ankisync's job database"),
                        ([tmp_path / "missing.db"], "cannot read it")):
        done = service.cli("restore", *map(str, files))
        assert done.returncode == 1, done.stderr
        assert says in done.stderr and "Nothing was restored" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert data_files() == kept
        assert not list(service.data_dir.glob("replaced-*"))

    # the machine is lost but for credentials.json: the job database, the collection
    # and the media are gone
    for path in service.data_dir.iterdir():
        if path.name.startswith(("ankisync.db", "collection.")):
            path.unlink() if path.is_file() else shutil.rmtree(path)
    done = service.cli("restore", *map(str, saved))
    assert done.returncode == 0, done.stderr
    assert mode(jobs_db) == 0o600 and mode(service.data_dir / "collection.anki2") == 0o600
    service.start()
    restored = service.job(first["taskId"])  # back with its status and note
    assert restored["status"] == "success", restored
    assert restored["result"]["noteId"] == first["result"]["noteId"], restored
    for task_id in waiting:  # waiting at the backup: they run again, and are not doubled
        job, _ = service.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert service.call("GET", f"/api/v1/tasks/{later}")[0] == 404  # taken after the backup
    assert_exactly_once(tmp_path, sync_server, account, [first["taskId"], *waiting, later])
    # the clips come back from the sync server, which holds every synced one
    media = service.data_dir / "collection.media"
    wait_until(lambda: all((media / clip).is_file() for clip in first["result"]["audio"].values()),
               lambda: "the first card's clips back from the server:\n" + service.logs())


def test_a_colpkg_exported_from_anki_with_media_restores_into_a_new_data_dir(tmp_path):
    from anki.collection import Collection
    from service import Service
    (tmp_path / "desktop").mkdir()
    col = Collection(str(tmp_path / "desktop" / "collection.anki2"))
    try:
        clip = col.media.write_data("hello.mp3", b"ID3 not really audio")
        note = col.new_note(col.models.by_name("Basic"))
        note["Front"], note["Back"] = "hello", f"[sound:{clip}]"
        col.add_note(note, col.decks.id("Default"))
        exported = tmp_path / "desktop.colpkg"
        col.export_collection_package(str(exported), include_media=True, legacy=False)
    finally:
        col.close()
    service = Service(tmp_path / "data")  # a new machine: no data dir yet
    done = service.cli("backup")  # nothing to back up: said, and nothing made
    assert done.returncode == 1 and "ankisync.db does not exist" in done.stderr, done.stderr
    assert not service.data_dir.exists()
    done = service.cli("restore", str(exported))
    assert done.returncode == 0, done.stderr
    assert mode(service.data_dir) == 0o700
    restored = service.data_dir / "collection.anki2"
    assert mode(restored) == 0o600
    col = Collection(str(restored))
    try:
        assert [col.get_note(i)["Front"] for i in col.find_notes("")] == ["hello"]
    finally:
        col.close()
    assert (service.data_dir / "collection.media" / clip).read_bytes() == b"ID3 not really audio"
