"""Where the time goes: py-spy on the web process under enqueue load, on the worker in a burst.

    .venv/bin/pip install py-spy      # a bench tool only: not in requirements
    python bench/profile.py --out /tmp/ankisync-profiles

Records with `py-spy record --idle` (waits count: the latency is what is
explained), writes the raw collapsed stacks (DIR/web.txt, DIR/worker.txt; load
them in speedscope.app or flamegraph.pl) and prints, for each, the functions
that hold the largest share of the samples taken inside request handling /
task execution (inclusive: a function's share includes what it calls).
"""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import burst
import common
import enqueue

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy():
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(found):
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid, out, subprocesses=False, rate=200):
    """Start py-spy on pid; stop() it to get its file written."""
    argv = [py_spy(), "record", "--pid", str(pid), "--idle", "--format", "raw",
            "--rate", str(rate), "--output", str(out)]
    if subprocesses:
        argv.append("--subprocesses")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    time.sleep(1.0)  # attached before the load begins
    return process


def stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _frame(text):
    match = FRAME.match(text.strip())
    if not match:
        return text.strip()
    return f"{match['func']} ({os.path.basename(match['file'])})"


def summarize(path, within, top=30):
    """Lines: inclusive share of each function among stacks passing through `within`."""
    inclusive = collections.Counter()
    selected = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or within not in stack:
            continue
        frames = [_frame(f) for f in stack.split(";")]
        start = next(i for i, f in enumerate(frames) if within in f)
        selected += int(count)
        for frame in set(frames[start:]):
            inclusive[frame] += int(count)
    lines = [f"{selected} samples inside {within}"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"  {count / max(selected, 1) * 100:5.1f}%  {frame}")
    return lines


def main():
    parser = common.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/ankisync-profiles", help="where the stacks go")
    parser.add_argument("--requests", type=int, default=2000,
                        help="one-client posts recorded (default %(default)s)")
    parser.add_argument("--cards", type=int, default=20,
                        help="cards in the recorded burst (default %(default)s)")
    parser.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with common.Rig(args.rtt, args.tts_delay, args.workdir, args.keep) as rig:
        service = rig.service()
        try:
            web = next(p for p in common.group_pids(service) if common.role(p) == "web")
            spy = record(web, out / "web.txt")
            try:
                result = enqueue.enqueue_one_client(service, args.requests, warmup=50)
            finally:
                stop(spy)
            print("enqueue-1 under py-spy: " + enqueue.LINES["enqueue-1"](result))
        finally:
            rig.stop(service)
        service = rig.service()
        try:
            burst.warm_up(service)
            pids = common.group_pids(service)
            main_worker = min(p for p in pids if common.role(p) == "worker")
            spy = record(main_worker, out / "worker.txt", subprocesses=True)
            try:
                result = burst.burst(service, args.cards, timeout=300)
            finally:
                stop(spy)
            print(f"burst-{args.cards} under py-spy: " + burst.burst_line(result))
        finally:
            rig.stop(service)
    print("\n# web process, one client posting (request handling):")
    print("\n".join(summarize(out / "web.txt", "Task.service", args.top)))
    print("\n# worker, the burst (task execution):")
    print("\n".join(summarize(out / "worker.txt", "huey_tasks.py", args.top)))
    print(f"\nraw stacks: {out}/web.txt, {out}/worker.txt")


if __name__ == "__main__":
    main()
