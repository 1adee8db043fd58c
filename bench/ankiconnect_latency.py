"""AnkiConnect latency: a Yomitan lookup, and bulk actions on a 10,000-note collection.

Starts a real ankisync (run.sh) with AnkiConnect on, a real Anki sync server
behind bench/delay_proxy.py (so a sync takes as long as over a real network).

lookup: logs in, then times `canAddNotes` (one note, as Yomitan sends per word
shown): first with nothing else running, then while `sync` calls run back to
back (each after adding a note, so every sync has something to carry).

actions: a second ankisync starts on a collection of --big-notes Basic notes
(built with anki's own API before the start, bench/common.py) and times
`findNotes` (all of them), `notesInfo` of 100 notes, `deleteNotes` of 100 and
`changeDeck` of 100 cards (each write on its own 100): idle (before it logs in,
so no sync can run), then while syncs run back to back as above (only calls that
start and end while a sync runs are kept). Medians of --repeats (5).

    .venv/bin/python bench/ankiconnect_latency.py [--delay 0.05] [--samples 300]
    .venv/bin/python bench/ankiconnect_latency.py --only actions [--big-notes 10000] [--repeats 5]
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(ROOT / "bench")]

from anki_server import SyncServer, free_port  # noqa: E402
from common import make_collection  # noqa: E402
from delay_proxy import DelayProxy  # noqa: E402
from service import Service  # noqa: E402

NOTE = {"deckName": "Default", "modelName": "Basic",
        "fields": {"Front": "lookup", "Back": ""}, "options": {"allowDuplicate": False}}


def ankiconnect(port, action, **params):
    body = json.dumps({"action": action, "version": 6, "params": params}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=120) as answer:
        reply = json.loads(answer.read())
    if reply["error"]:
        raise RuntimeError(f"{action}: {reply['error']}")
    return reply["result"]


def timed_lookup(port):
    started = time.perf_counter()
    ankiconnect(port, "canAddNotes", notes=[NOTE])
    return (time.perf_counter() - started) * 1000


def summary(name, samples):
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{name:<22} n={len(samples):<4} median {statistics.median(samples):7.1f} ms"
          f"   p99 {p99:7.1f} ms   max {samples[-1]:7.1f} ms")


def wait_listening(port):
    deadline = time.monotonic() + 60
    while True:
        try:
            return ankiconnect(port, "version")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Syncing:
    """Syncs back to back on a thread (each after adding a note, so it carries
    something); `running` is set while one is in progress."""

    def __init__(self, port):
        self.port, self.running, self.stop = port, threading.Event(), threading.Event()
        self.durations = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            ankiconnect(self.port, "addNote",
                        note={**NOTE, "fields": {"Front": f"during {n}", "Back": ""}})
            self.running.set()
            started = time.perf_counter()
            ankiconnect(self.port, "sync")
            self.durations.append(time.perf_counter() - started)
            self.running.clear()

    def typical(self):
        """Seconds a sync takes (the median so far; waits for the first)."""
        while not self.durations:
            time.sleep(0.05)
        return statistics.median(self.durations)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join(300)


def timed(port, action, **params):
    started = time.perf_counter()
    ankiconnect(port, action, **params)
    return (time.perf_counter() - started) * 1000


def action_cases(notes, batches):
    """(name, action, params) per measured call; the writes take a fresh 100 each time."""
    yield "findNotes (all)", "findNotes", lambda: {"query": "deck:Default"}
    yield "notesInfo 100", "notesInfo", lambda: {"notes": notes[:100]}
    yield "deleteNotes 100", "deleteNotes", lambda: {"notes": next(batches)[0]}
    yield "changeDeck 100", "changeDeck", lambda: {"cards": next(batches)[1], "deck": "Moved"}


def measure_actions(port, notes, batches, repeats, syncing=None):
    """(median, max) ms per case.

    With syncing, each call starts at a random point of a sync (a uniform offset
    into the last sync's duration: the collection part, which holds the
    collection, or the media part, which does not), and counts only if it ended
    before that sync did; calls started right as the flag is set would mostly run
    before the worker even began the sync.
    """
    results = {}
    for name, act, params in action_cases(notes, batches):
        samples = []
        while len(samples) < repeats:
            args = params()
            if syncing is not None:
                syncing.running.wait(300)
                time.sleep(random.uniform(0, 0.9 * syncing.typical()))
                if not syncing.running.is_set():
                    continue
            latency = timed(port, act, **args)
            if syncing is None or syncing.running.is_set():
                samples.append(latency)
        results[name] = (statistics.median(samples), max(samples))
    return results


def bulk_actions(tmp, sync_url, args):
    port = free_port()
    service = Service(Path(tmp) / "big", ANKISYNC_SYNC_ENDPOINT=sync_url,
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_LOG_LEVEL="INFO",
                      ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}")
    began = time.monotonic()
    make_collection(service.data_dir, args.big_notes)
    built = time.monotonic() - began
    service.start(timeout=120)
    try:
        wait_listening(port)
        notes = ankiconnect(port, "findNotes", query="deck:Default")
        assert len(notes) == args.big_notes, len(notes)
        # the writes' notes: the last ones, 100 at a time, with their cards
        pool = notes[100:]
        chunks = [pool[i:i + 100] for i in range(len(pool) - 100, 0, -100)]
        infos = ankiconnect(port, "notesInfo", notes=[n for chunk in chunks for n in chunk])
        cards = {info["noteId"]: info["cards"] for info in infos}
        batches = iter([(chunk, [c for n in chunk for c in cards[n]]) for chunk in chunks])
        for _ in range(3):  # warm up
            ankiconnect(port, "findNotes", query="deck:Default")
            ankiconnect(port, "notesInfo", notes=notes[:100])
        idle = measure_actions(port, notes, batches, args.repeats)
        service.sync_login("user2")
        began = time.monotonic()
        ankiconnect(port, "sync")  # the first sync uploads the whole collection
        upload = time.monotonic() - began
        with Syncing(port) as syncing:
            during = measure_actions(port, notes, batches, args.repeats, syncing)
    finally:
        service.stop()
    print(f"collection: {args.big_notes} notes (built in {built:.1f} s, first sync"
          f" {upload:.1f} s); {len(syncing.durations)} syncs during, median"
          f" {statistics.median(syncing.durations or [0]) * 1000:.0f} ms each;"
          f" medians of {args.repeats}")
    for name in idle:
        print(f"{name:<18} idle median {idle[name][0]:7.1f} ms (max {idle[name][1]:7.1f})"
              f"   in sync median {during[name][0]:7.1f} ms (max {during[name][1]:7.1f})")


def lookups(tmp, sync_url, args):
    port = free_port()
    service = Service(Path(tmp) / "svc", ANKISYNC_SYNC_ENDPOINT=sync_url,
                      ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_LOG_LEVEL="INFO",
                      ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}").start()
    try:
        wait_listening(port)
        service.sync_login("user")
        batch = [{**NOTE, "fields": {"Front": f"seed {n}", "Back": "x"}}
                 for n in range(args.notes)]
        ankiconnect(port, "addNotes", notes=batch)
        ankiconnect(port, "sync")
        for _ in range(20):  # warm up
            timed_lookup(port)

        idle = [timed_lookup(port) for _ in range(args.samples)]
        during = []
        with Syncing(port) as syncing:
            while len(during) < args.samples:
                syncing.running.wait(300)
                latency = timed_lookup(port)
                # counted only when a sync was still running as the lookup ended
                if syncing.running.is_set():
                    during.append(latency)
    finally:
        service.stop()

    print(f"collection: {args.notes} notes; sync server behind a {args.delay * 1000:.0f} ms"
          f" one-way delay; {len(syncing.durations)} syncs, median"
          f" {statistics.median(syncing.durations) * 1000:.0f} ms each")
    summary("canAddNotes idle", idle)
    summary("canAddNotes in sync", during)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05,
                        help="one-way delay added to the sync server, seconds (default 0.05)")
    parser.add_argument("--samples", type=int, default=300, help="lookups per case")
    parser.add_argument("--notes", type=int, default=2000, help="notes in the lookup collection")
    parser.add_argument("--big-notes", type=int, default=10_000,
                        help="notes in the bulk-actions collection (default 10000)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="calls per bulk action and case; the median is printed (default 5)")
    parser.add_argument("--only", choices=("lookup", "actions"),
                        help="run one of the two measures (default both)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, \
            SyncServer(Path(tmp) / "server", users={"user": "pass", "user2": "pass"}) as server, \
            DelayProxy(("127.0.0.1", server.port), delay=args.delay) as proxy:
        if args.only in (None, "lookup"):
            lookups(tmp, proxy.url, args)
        if args.only in (None, "actions"):
            bulk_actions(tmp, proxy.url, args)


if __name__ == "__main__":
    main()
