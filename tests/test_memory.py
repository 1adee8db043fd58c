"""Memory (issue 17): which processes run, and that the savings keep every behaviour.

The worker role is two processes: Huey's consumer, which reads the schedule
in its own main loop (consumer.py), and the process worker it forks. Read
from outside the running processes (/proc), never from what the code says.
"""

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from helpers import card
from service import CARD, wait_until


def worker_role(service):
    """(consumer pid, [its children's pids]) of the service's `ankisync.py worker` processes."""
    found = {}
    for pid in service.group_alive():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"worker" in command:
            found[pid] = parent
    consumers = [pid for pid, parent in found.items() if parent not in found]
    assert len(consumers) == 1, found
    return consumers[0], sorted(pid for pid, parent in found.items() if parent == consumers[0])


def test_the_worker_is_two_processes_and_scheduled_retries_still_run(service, fake_tts):
    fake_tts.fail_next(1, 503)  # the job's retry waits in Huey's schedule, not its queue
    job, seen = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success" and "retrying" in seen, (job, seen)
    consumer, children = worker_role(service)
    assert len(children) == 1, f"the consumer {consumer} forked {children}: a scheduler too?"


@pytest.mark.slow
def test_a_worker_forked_again_after_a_death_still_gets_its_retries(service, fake_tts):
    """The consumer restarts a killed worker; that worker opens its own connection to the
    queue (the consumer's own, with which it reads the schedule, stays its own)."""
    job, _ = service.wait(service.post_card(card(1))[1]["taskId"])
    assert job["status"] == "success", job
    consumer, (child,) = worker_role(service)
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: worker_role(service)[1] not in ([], [child]), "a new process worker", 30)
    for n in (2, 3):
        fake_tts.fail_next(1, 503)
        job, seen = service.wait(service.post_card(card(n))[1]["taskId"])
        assert job["status"] == "success" and "retrying" in seen, (job, seen)
    assert worker_role(service)[0] == consumer
    assert "Worker 1 died, restarting" in service.logs()


def rollup_mib(pid, field):
    """One field of /proc/PID/smaps_rollup (Rss, Anonymous...), in MiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} line for {pid}")


def anonymous_mib(pid):
    """The process's anonymous memory (heap, Python's and Rust's objects), in MiB."""
    return rollup_mib(pid, "Anonymous")


def test_anki_errors_cost_the_worker_no_backtrace(make_service):
    """Some machines set RUST_BACKTRACE=1 for every process. anki's backend then captures
    and symbolizes a backtrace at each error it makes, the expected one of every collection
    open included: ~36 MiB of heap the worker kept for good (86 MiB anonymous after one
    card instead of ~50)."""
    service = make_service(RUST_BACKTRACE="1")
    job, _ = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success", job
    _, (child,) = worker_role(service)
    assert anonymous_mib(child) < 70, f"the worker holds {anonymous_mib(child):.0f} MiB"


def test_the_web_process_stays_small_as_the_job_table_grows(service):
    """/health counts jobs by reading the whole job table, and each of the web process's 16
    threads has its own SQLite connection: with SQLite's default page cache each kept up to
    2 MB of the table (+3 MiB of RSS per 200 cards, up to 32 MiB)."""
    assert service.call("GET", "/api/v1/health")[0] == 200  # the tables exist
    # what a busy month leaves: 20,000 finished cards (made here, not posted: time)
    now, request = time.time(), json.dumps(CARD)
    with sqlite3.connect(service.data_dir / "ankisync.db", timeout=10) as conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
            " INSERT INTO ankisync_jobs (id, status, request, created_at, completed_at, step,"
            " attempts, result, added_at, synced_at) SELECT printf('seeded-%05d', i), 'success',"
            " ?, ?, ?, 'done', 1, '{}', ?, ? FROM n", (request, now, now, now, now))
    conn.close()
    web = next(pid for pid in service.group_alive()
               if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    assert service.call("GET", "/api/v1/health")[0] == 200
    before = rollup_mib(web, "Rss")
    answers = []

    def ask():  # many at once, so that most of waitress's threads read the table
        answers.extend(service.call("GET", "/api/v1/health")[0] for _ in range(8))
    clients = [threading.Thread(target=ask) for _ in range(16)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert answers == [200] * 128
    grew = rollup_mib(web, "Rss") - before
    assert grew < 12, f"the web process grew by {grew:.1f} MiB"


@pytest.mark.slow
def test_a_search_of_every_note_leaves_the_worker_no_bigger(make_service):
    """Anki asks SQLite to keep 40 MB of the collection's pages, and a search that reads
    every note fills it: ~11 MiB more in the worker for 30,000 notes, kept for good. The
    worker keeps SQLite's default 2 MB; the rest stays in the OS's file cache."""
    from anki.collection import AddNoteRequest, Collection
    from anki_server import free_port
    from test_ankiconnect import Client, wait_for_port

    port = free_port()
    service = make_service(start=False, ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}")
    service.data_dir.mkdir(mode=0o700, parents=True)
    col = Collection(str(service.data_dir / "collection.anki2"))
    basic, deck = col.models.by_name("Basic"), col.decks.id("Default")
    requests = []
    for n in range(30_000):
        note = col.new_note(basic)
        note["Front"], note["Back"] = f"front {n}", f"back {n}: the size a real card has " * 3
        requests.append(AddNoteRequest(note=note, deck_id=deck))
    col.add_notes(requests)
    col.close()
    size = (service.data_dir / "collection.anki2").stat().st_size
    assert size > 8 * 2**20, size  # bigger than the cache we keep, by far

    service.start()
    wait_for_port(service, port)
    wait_until(lambda: service.call("GET", "/api/v1/health")[2]["worker"]["ready"],
               "the worker warmed up: the collection open")
    _, (child,) = worker_role(service)
    before = anonymous_mib(child)
    assert Client(port)("findNotes", query="back:*nowhere*") == []  # reads every note
    grown = anonymous_mib(child) - before
    assert grown < 4, f"a search of every note kept {grown:.1f} MiB"
