"""What `./run.sh backup` costs on a big collection, running and stopped.

    python bench/backup.py --notes 10000 --cards 20

A service starts on a collection that already holds --notes Basic notes, takes
--cards cards (so its job table has rows), then:
  backup-write: `./run.sh backup` while it runs (the worker takes it): seconds,
    and the two files' sizes;
  backup-unchanged: the same again, nothing changed: seconds (nothing written);
  backup-stopped: `./run.sh backup` into a new folder once the service is
    stopped (the command opens the collection itself): seconds.
The worker holds the collection's lock for most of a backup: the seconds are
also how long a card or an AnkiConnect call may wait behind it.
"""

import time
from pathlib import Path

import burst
import common


def timed_backup(service, folder):
    began = time.monotonic()
    done = service.cli("backup", str(folder))
    took = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"backup failed: {done.stderr}")
    files = [Path(line) for line in done.stdout.split()]
    return {"s": took, "written": len(files),
            "mb": sum(path.stat().st_size for path in files) / 1e6}


def run_once(rig, args):
    service = rig.service(notes=args.notes)
    folder = service.data_dir.parent / f"{service.data_dir.name}-backups"
    try:
        burst.warm_up(service)
        burst.burst(service, args.cards, args.timeout)
        results = {"backup-write": timed_backup(service, folder),
                   "backup-unchanged": timed_backup(service, folder)}
    finally:
        rig.stop(service)  # SIGKILL: the worker's lock goes with it
    results["backup-stopped"] = timed_backup(service, folder.with_name(folder.name + "-stopped"))
    return results


def line(name):
    return lambda r: (f"{r['s']:.2f} s, {r['written']:.0f} files written ({r['mb']:.1f} MB)")


def add_arguments(parser):
    parser.add_argument("--notes", type=int, default=10_000,
                        help="notes in the collection before the start (default %(default)s)")
    parser.add_argument("--cards", type=int, default=20,
                        help="cards posted before the backups (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120,
                        help="longest wait for the cards, seconds (default %(default)s)")


def main():
    common.main(__doc__, add_arguments, run_once, line)


if __name__ == "__main__":
    main()
