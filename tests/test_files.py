"""Damaged files of the data dir: the start stops naming the file and the fix, no traceback."""

import os
import shutil

import pytest

from service import Service
from test_e2e import synced_notes
from helpers import card, run_sh_stops

pytestmark = pytest.mark.slow  # a damaged file and a restart per test



@pytest.fixture
def used_dir(make_service, account, tmp_path):
    """A data dir after a card went to the sync server; returns (service, account)."""
    service = make_service("used")
    service.sync_login(account)
    job, _ = service.wait(service.post_card(card(1))[1]["taskId"])
    assert job["status"] == "success" and job["result"]["synced"], job
    # one more card waits: a damaged job table must not hide it
    assert service.stop() == 0
    return service


def start(service, *args):
    """`./run.sh ARGS` on the service's data dir: (exit status, stderr)."""
    return run_sh_stops(service.env, *args)


def copy_of(service, tmp_path, name):
    copy = Service(tmp_path / name, **{k: v for k, v in service.env.items()
                                       if k.startswith("ANKISYNC_") and k not in (
                                           "ANKISYNC_DATA_DIR", "ANKISYNC_LISTEN")})
    shutil.copytree(service.data_dir, copy.data_dir)
    return copy


def overwrite(path, data, offset=0):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def assert_stops_naming(service, path, fix, *args):
    code, stderr = start(service, *args)
    assert code == 1, stderr
    assert str(path) in stderr and fix in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert not (service.data_dir / "worker.pid").exists()


@pytest.mark.parametrize("damage", ["zeroed", "emptied", "garbage header", "torn page"])
def test_damaged_job_table_stops_the_start(used_dir, tmp_path, damage):
    service = copy_of(used_dir, tmp_path, "copy")
    path = service.data_dir / "ankisync.db"
    size = path.stat().st_size
    if damage == "zeroed":
        overwrite(path, bytes(size))
    elif damage == "emptied":  # truncated: SQLite alone would start on an empty job table
        path.write_bytes(b"")
    elif damage == "garbage header":
        overwrite(path, os.urandom(100))
    else:  # a page in the middle overwritten, as a torn write on an SD card leaves it
        overwrite(path, b"\xff" * 4096, offset=4096)
    fix = f"move it aside (mv {path} {path}.damaged"
    if damage == "emptied":
        fix = f"move it aside (mv {path}"
    for command in [(), ("serve",), ("worker",), ("status",)]:
        assert_stops_naming(service, path, fix, *command)


def test_damaged_credentials_stop_the_start(used_dir, tmp_path):
    service = copy_of(used_dir, tmp_path, "copy")
    path = service.data_dir / "credentials.json"
    path.write_text('{"jwt_secret": "abc", "api_key_sha')  # cut short
    for command in [(), ("serve",), ("worker",)]:
        assert_stops_naming(service, path, "run `./run.sh setup` again", *command)


def test_damaged_collection_stops_the_worker_and_the_fix_works(used_dir, tmp_path, sync_server,
                                                               account):
    service = copy_of(used_dir, tmp_path, "copy")
    path = service.data_dir / "collection.anki2"
    overwrite(path, bytes(path.stat().st_size))
    fix = "the next sync downloads your collection from the sync server"
    assert_stops_naming(service, path, fix)
    assert_stops_naming(service, path, fix, "worker")

    # a page in the middle torn
    shutil.copy2(used_dir.data_dir / "collection.anki2", path)
    overwrite(path, b"\xff" * 4096, offset=4096 * 3)
    assert_stops_naming(service, path, fix)

    # the fix the message gives: move it aside and start; the server's notes come back
    path.rename(path.with_name("collection.anki2.damaged"))
    service.api_key = used_dir.api_key
    service.start()
    try:
        job, _ = service.wait(service.post_card(card(2))[1]["taskId"])
        assert job["status"] == "success" and job["result"]["synced"], job
        notes, _ = synced_notes(tmp_path, sync_server, account)
        assert sorted(note["fields"]["Word"] for note in notes) == ["word1", "word2"]
    finally:
        service.kill()
