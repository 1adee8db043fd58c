"""How cost grows with the work: bursts of 1, 20, 200 cards; a 10,000-note collection.

    python bench/scaling.py --sizes 1,20,200 --notes 10000

One fresh service takes the bursts in turn (each to all synced, or to
--timeout: a burst not done by then prints how many were synced and the
rate). A second service starts on a collection that already holds --notes
Basic notes (made with anki's own API before the start; its first sync
uploads it whole), then takes a 20-card burst and the one-client enqueue
measure. Prints one line per burst size and two for the big collection; with
--pi also each service's memory cgroup peak and whether its limit was hit.
"""

import time

import burst
import common
import enqueue


def run_once(rig, args):
    results = {}
    service = rig.service()
    try:
        burst.warm_up(service)
        for size in args.sizes:
            results[f"scale-burst-{size}"] = burst.burst(service, size, args.timeout)
        if rig.pi:
            results["pi-memory-bursts"] = rig.pi_memory(service)
    finally:
        rig.stop(service)
    if args.notes:
        began = time.monotonic()
        service = rig.service(notes=args.notes)
        try:
            burst.warm_up(service)  # includes the full upload of the big collection
            ready = time.monotonic() - began
            big = burst.burst(service, 20, args.timeout)
            results[f"notes{args.notes}-burst-20"] = {**big, "ready_s": ready}
            results[f"notes{args.notes}-enqueue-1"] = enqueue.enqueue_one_client(
                service, args.requests, args.warmup)
            if rig.pi:
                results[f"pi-memory-notes{args.notes}"] = rig.pi_memory(service)
        finally:
            rig.stop(service)
    return results


def line(name):
    if name.startswith("pi-memory"):
        return burst.LINES["pi-memory"]
    if name.endswith("enqueue-1"):
        return enqueue.LINES["enqueue-1"]
    if name.startswith("notes"):
        return lambda r: (burst.burst_line(r) + f"; made, started and first sync in"
                          f" {r['ready_s']:.1f} s")
    return burst.burst_line


def add_arguments(parser):
    parser.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")],
                        default=[1, 20, 200], help="burst sizes (default 1,20,200)")
    parser.add_argument("--notes", type=int, default=10_000,
                        help="notes in the big collection, 0 to skip (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120,
                        help="longest wait for one burst, seconds (default %(default)s)")
    parser.add_argument("--requests", type=int, default=1000,
                        help="posts timed on the big collection (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="posts before timing (default %(default)s)")


def main():
    common.main(__doc__, add_arguments, run_once, line)


if __name__ == "__main__":
    main()
