"""How long a Yomitan lookup waits: canAddNotes latency, idle and during a sync.

Starts a real ankisync (run.sh) with AnkiConnect on, a real Anki sync server
behind bench/delay_proxy.py (so a sync takes as long as over a real network),
logs in, then times `canAddNotes` (one note, as Yomitan sends per word shown):
first with nothing else running, then while `sync` calls run back to back
(each after adding a note, so every sync has something to carry).

    .venv/bin/python bench/ankiconnect_latency.py [--delay 0.05] [--samples 300]
"""

import argparse
import json
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05,
                        help="one-way delay added to the sync server, seconds (default 0.05)")
    parser.add_argument("--samples", type=int, default=300, help="lookups per case")
    parser.add_argument("--notes", type=int, default=2000, help="notes in the collection")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, \
            SyncServer(Path(tmp) / "server", users={"user": "pass"}) as server, \
            DelayProxy(("127.0.0.1", server.port), delay=args.delay) as proxy:
        port = free_port()
        service = Service(Path(tmp) / "svc", ANKISYNC_SYNC_ENDPOINT=proxy.url,
                          ANKISYNC_GOOGLE_API_KEY=None, ANKISYNC_LOG_LEVEL="INFO",
                          ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}").start()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ankiconnect(port, "version")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            service.sync_login("user")
            batch = [{**NOTE, "fields": {"Front": f"seed {n}", "Back": "x"}}
                     for n in range(args.notes)]
            ankiconnect(port, "addNotes", notes=batch)
            ankiconnect(port, "sync")
            for _ in range(20):  # warm up
                timed_lookup(port)

            idle = [timed_lookup(port) for _ in range(args.samples)]

            syncing = threading.Event()
            stop = threading.Event()
            durations = []

            def keep_syncing():
                n = 0
                while not stop.is_set():
                    n += 1
                    ankiconnect(port, "addNote",
                                note={**NOTE, "fields": {"Front": f"new {n}", "Back": ""}})
                    syncing.set()
                    started = time.perf_counter()
                    ankiconnect(port, "sync")
                    durations.append(time.perf_counter() - started)
                    syncing.clear()

            syncer = threading.Thread(target=keep_syncing, daemon=True)
            syncer.start()
            during = []
            while len(during) < args.samples:
                syncing.wait()
                latency = timed_lookup(port)
                # counted only when a sync was still running as the lookup ended
                if syncing.is_set():
                    during.append(latency)
            stop.set()
            syncer.join()
        finally:
            service.stop()

    print(f"collection: {args.notes} notes; sync server behind a {args.delay * 1000:.0f} ms"
          f" one-way delay; {len(durations)} syncs, median"
          f" {statistics.median(durations) * 1000:.0f} ms each")
    summary("canAddNotes idle", idle)
    summary("canAddNotes in sync", during)


if __name__ == "__main__":
    main()
