"""Where one ?async=false card's time goes, read from the service's own log.

    python bench/breakdown.py --runs 5

In the rig of burst.py (TTS --tts-delay per clip, the sync server --rtt away),
after one warm-up card, --cards cards are posted one after the other with
?async=false. Each card's log lines (ms timestamps) give its phases:

  pick-up   the web's "accepted" to the worker's "started"
  speak     "started" to "spoken" (both clips, side by side)
  add       "spoken" to "note added"
  sync      "note added" to "collection sync: ..." (the collection part)
  media     to "synced (...)": what the media sync took beyond the collection sync
  finish    to the job's "done" line (the job row written)
  answer    the client's whole wait minus all of the above: the POST, the web's
            wait for the job (it polls the job row) and the answer

Prints each phase's median over a run's cards (the median of the runs' medians), and the floor the
rig allows: one TTS round trip plus the collection sync's 7 round trips.
"""

import re
import statistics
import time
from datetime import datetime

import burst
import common

PHASES = ("pick-up", "speak", "add", "sync", "media", "finish", "answer")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _when(line):
    match = STAMP.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(log, job_id, client_seconds):
    """{phase: seconds} of one job, from the log's lines."""
    marks = {}
    lines = log.splitlines()
    for number, line in enumerate(lines):
        if not STAMP.match(line):
            continue
        if f"job {job_id}: accepted" in line:
            marks["accepted"] = _when(line)
        elif f"job {job_id}: started" in line:
            marks["started"] = _when(line)
        elif f"job {job_id}: spoken" in line:
            marks["spoken"] = _when(line)
        elif f"job {job_id}: note" in line and "added" in line:
            marks["added"] = _when(line)
            # this job's batch: the first sync lines after its note was added
            after = lines[number + 1:]
            marks["collection"] = _when(next(x for x in after if "collection sync:" in x))
            marks["synced"] = _when(next(x for x in after if "INFO worker: synced (" in x))
        elif f"job {job_id}: done" in line:
            marks["done"] = _when(line)
    order = ["accepted", "started", "spoken", "added", "collection", "synced", "done"]
    spans = [marks[b] - marks[a] for a, b in zip(order, order[1:])]
    return dict(zip(PHASES, spans + [client_seconds - (marks["done"] - marks["accepted"])]))


def run_once(rig, args):
    service = rig.service()
    cards = []
    try:
        burst.warm_up(service)
        client = common.Client(service)
        try:
            for _ in range(args.cards):
                began = time.monotonic()
                status, body = client.post_card(query="?async=false")
                took = time.monotonic() - began
                if status != 200 or not body.get("synced"):
                    raise RuntimeError(f"?async=false answered {status}: {body}")
                cards.append((body["taskId"], took))
        finally:
            client.close()
        log = service.logs()
    finally:
        rig.stop(service)
    found = [phases(log, task_id, took) for task_id, took in cards]
    medians = {phase: statistics.median(card[phase] for card in found) for phase in PHASES}
    return {"breakdown": {**medians, "whole": statistics.median(took for _, took in cards),
                          "rtt": args.rtt, "tts": args.tts_delay}}


def line(result):
    floor = result["tts"] + 7 * result["rtt"]
    return (f"one card {result['whole']:.3f} s (floor {floor:.2f} s: one TTS answer and"
            " 7 sync round trips); " + ", ".join(f"{phase} {result[phase] * 1000:.0f} ms"
                                                for phase in PHASES))


def add_arguments(parser):
    parser.add_argument("--cards", type=int, default=5,
                        help="?async=false cards per run (default %(default)s)")


if __name__ == "__main__":
    common.main(__doc__, add_arguments, run_once, lambda name: line)
