"""Every measure of issue 4, one line each, medians over --runs.

    python bench/run_all.py --runs 3
    bench/at_revision.sh HEAD run_all.py --runs 3     # a clean export of a commit

Each run starts two fresh services: one for the enqueue measures (enqueue.py),
one for the burst, ?async=false, memory, idle cost and pick-up (burst.py,
idle.py). The scaling measures (scaling.py) run --scaling-runs times (default
once: the 200-card burst is the long one, bounded by --timeout). With the
defaults a run of the current worker takes about 9 minutes on 2 cores.
"""

import subprocess
import sys
import time

import burst
import common
import enqueue
import idle
import scaling

ORDER = ["enqueue-1", "enqueue-16", "web-rss", "burst-20", "async-false", "memory",
         "idle-cost", "pickup"]


def revision():
    stamp = common.ROOT / "bench" / "REVISION"
    if stamp.exists():
        return stamp.read_text().strip() + " (clean export)"
    try:
        commit = subprocess.run(["git", "-C", str(common.ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(common.ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes" if dirty.strip() else "")


def run_once(rig, args):
    results = enqueue.run_once(rig, args)
    args.cards = 20
    burst_results, service = burst.run_once(rig, args, keep_service=True)
    try:
        results.update(burst_results)
        time.sleep(2)  # the last job's last writes, the worker's backoff
        results.update(idle.measure(service, args.idle))
    finally:
        rig.stop(service)
    return results


def main():
    parser = common.arg_parser(__doc__.splitlines()[0], runs=3, pi=True)
    enqueue.add_arguments(parser)
    parser.add_argument("--timeout", type=float, default=120,
                        help="longest wait for one burst, seconds (default %(default)s)")
    parser.add_argument("--async-cards", type=int, default=3,
                        help="?async=false cards timed per run (default %(default)s)")
    idle.add_arguments(parser)
    parser.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")],
                        default=[1, 20, 200], help="scaling burst sizes (default 1,20,200)")
    parser.add_argument("--notes", type=int, default=10_000,
                        help="notes in the big collection, 0 to skip (default %(default)s)")
    parser.add_argument("--scaling-runs", type=int, default=1,
                        help="runs of the scaling measures, 0 to skip (default %(default)s)")
    args = parser.parse_args()
    began = time.monotonic()
    print(f"# ankisync {revision()}; {common.machine()}", flush=True)
    print(f"# {' '.join(sys.argv)}", flush=True)
    with common.Rig(args.rtt, args.tts_delay, args.workdir, args.keep, args.pi) as rig:
        runs = []
        for number in range(args.runs):
            runs.append(run_once(rig, args))
            print(f"# run {number + 1}/{args.runs} done at {time.monotonic() - began:.0f} s",
                  file=sys.stderr, flush=True)
        scaled = []
        if args.scaling_runs:
            args.requests, args.warmup = 1000, 100
            scaled = [scaling.run_once(rig, args) for _ in range(args.scaling_runs)]
    lines = {**enqueue.LINES, **burst.LINES, **idle.LINES}
    for name in ORDER + (["pi-memory"] if args.pi else []):
        common.report(name, [run[name] for run in runs], lines[name], args.json)
    for name in (scaled[0] if scaled else {}):
        common.report(name, [run[name] for run in scaled], scaling.line(name), args.json)
    print(f"# {time.monotonic() - began:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
