"""What an idle service costs, and how fast it picks up a job after being idle.

    python bench/idle.py --runs 3 --idle 60

A fresh service gets one warm-up card to the end (anki imported, collection
open: the state it idles in), then is left alone for --idle seconds. Prints:
  idle-cost: CPU of all its processes over that time, in % of one core, and
             what they wrote meanwhile (/proc/PID/io write_bytes; and which
             files in the data dir changed size or mtime);
  pickup: from sending a POST to the job leaving `pending` (its status
          polled every 5 ms: startedAt has one-second resolution).
"""

import time

import burst
import common


def idle_cost(service, seconds):
    """CPU % of one core and bytes written by the whole group over `seconds` idle."""
    pids = common.group_pids(service)
    files = common.files_state(service.data_dir)
    io = common.io_counters(pids)
    cpu = common.cpu_ticks(pids)
    began = time.monotonic()
    time.sleep(seconds)
    cpu = common.cpu_ticks(pids) - cpu
    wall = time.monotonic() - began
    after = common.io_counters(pids)
    changed = sorted(name for name, state in common.files_state(service.data_dir).items()
                     if files.get(name) != state)
    return {"cpu_pct": cpu / wall * 100, "seconds": wall,
            "write_bytes": after["write_bytes"] - io["write_bytes"],
            "wchar": after["wchar"] - io["wchar"], "files_changed": changed}


def pickup(service, poll=0.005):
    """Seconds from sending a POST to its job no longer `pending`."""
    client = common.Client(service)
    try:
        body = common.card()
        began = time.monotonic()
        status, answer = client.post_card(body)
        answered = time.monotonic() - began
        if status != 202:
            raise RuntimeError(f"card refused: {status} {answer}")
        while True:
            job = client.job(answer["taskId"])
            if job["status"] != "pending":
                break
            if time.monotonic() - began > 60:
                raise RuntimeError(f"job still pending after 60 s: {job}")
            time.sleep(poll)
        took = time.monotonic() - began
        common.wait_one(client, answer["taskId"])
    finally:
        client.close()
    return {"seconds": took, "post_ms": answered * 1000}


LINES = {
    "idle-cost": lambda r: (f"{r['cpu_pct']:.2f}% of one core over {r['seconds']:.0f} s idle;"
                            f" wrote {r['write_bytes']:.0f} bytes to storage"
                            f" (most in one run: {r.get('write_bytes_max', r['write_bytes']):.0f})"
                            f" ({r['wchar']:.0f} bytes in write calls, sockets included);"
                            f" data-dir files changed: {', '.join(r['files_changed']) or 'none'}"),
    "pickup": lambda r: (f"{r['seconds'] * 1000:.0f} ms from POST to the job started, after"
                         f" {r['idle']:.0f} s idle (the POST itself: {r['post_ms']:.1f} ms)"),
}


def measure(service, idle):
    """Both measures on a warmed-up service: idle for `idle` seconds, then one card."""
    cost = idle_cost(service, idle)
    return {"idle-cost": cost, "pickup": {**pickup(service), "idle": idle}}


def run_once(rig, args):
    service = rig.service()
    try:
        burst.warm_up(service)
        time.sleep(2)  # the worker's backoff after that job, and its last writes
        return measure(service, args.idle)
    finally:
        rig.stop(service)


def add_arguments(parser):
    parser.add_argument("--idle", type=float, default=30,
                        help="seconds left idle before the pick-up (default %(default)s;"
                             " the issue's figure is for 60)")


def main():
    common.main(__doc__, add_arguments, run_once, LINES.__getitem__)


if __name__ == "__main__":
    main()
