"""What each process of the service holds, fresh and after bursts of cards.

    python bench/memory.py --cards 200 --bursts 3

One fresh service (the same rig as burst.py: fake TTS, sync server behind the
delay proxy). Its processes are read from /proc/PID/smaps_rollup freshly
started, after one warm-up card, and after each of --bursts bursts of --cards
cards (each to all synced). Each process is named for its role: run.sh (the
bash launcher), consumer (Huey's main process, `ankisync.py worker`),
scheduler and worker (the two processes it forks; the worker is the one with
anki loaded), web (`ankisync.py serve`). Prints, per reading, a line per
process (RSS, PSS, USS = private clean + dirty, shared, anonymous, in MiB) and
the sums; then the figures the issue asks for: the worker's PSS after the
last burst and the RSS sum of all processes.
--top N also prints the worker's N largest mappings by PSS after the last burst.
"""

import json
import sys
import time
from pathlib import Path

import burst
import common

MiB = common.MiB
FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
          "Anonymous", "Swap")


def rollup(pid):
    """{field: bytes} of /proc/PID/smaps_rollup (the FIELDS), or None when it is gone."""
    text = common._read(f"/proc/{pid}/smaps_rollup")
    if not text:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) * 1024
    return values


def _stat(pid):
    fields = common._read(f"/proc/{pid}/stat").rpartition(")")[2].split()
    return (int(fields[1]), int(fields[19])) if fields else (0, 0)  # ppid, starttime


def roles(pids):
    """{pid: role} of the service's process group."""
    named = {pid: common.role(pid) for pid in pids}
    consumers = {pid for pid, name in named.items() if name == "worker"
                 and named.get(_stat(pid)[0]) != "worker"}
    for pid, name in named.items():
        if name == "worker" and pid not in consumers:
            maps = common._read(f"/proc/{pid}/maps")
            named[pid] = "worker" if "_rsbridge" in maps else "scheduler"
        elif pid in consumers:
            named[pid] = "consumer"
    return named


def reading(service):
    """[{role, pid, rss, pss, uss, shared, anon}] of the group, MiB, with the sums."""
    rows = []
    for pid, name in sorted(roles(common.group_pids(service)).items()):
        values = rollup(pid)
        if not values:
            continue
        rows.append({"role": name, "pid": pid, "rss": values["Rss"] / MiB,
                     "pss": values["Pss"] / MiB,
                     "uss": (values["Private_Clean"] + values["Private_Dirty"]) / MiB,
                     "shared": (values["Shared_Clean"] + values["Shared_Dirty"]) / MiB,
                     "anon": values["Anonymous"] / MiB, "swap": values.get("Swap", 0) / MiB})
    return {"processes": rows, "rss": sum(r["rss"] for r in rows),
            "pss": sum(r["pss"] for r in rows),
            "worker_pss": sum(r["pss"] for r in rows if r["role"] == "worker")}


def top_mappings(pid, count):
    """The `count` largest mappings of a process by PSS: [(MiB, name)], names merged."""
    sizes, name = {}, None
    for line in common._read(f"/proc/{pid}/smaps").splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            name = head[5] if len(head) > 5 else "[anon]"
        elif head and head[0] == "Pss:":
            sizes[name] = sizes.get(name, 0) + int(head[1]) * 1024
    ordered = sorted(sizes.items(), key=lambda item: -item[1])[:count]
    return [(size / MiB, Path(path).name if path.startswith("/") else path)
            for path, size in ordered]


def print_reading(label, read):
    print(f"{label}: RSS sum {read['rss']:.1f} MiB, PSS sum {read['pss']:.1f} MiB,"
          f" worker PSS {read['worker_pss']:.1f} MiB", flush=True)
    for row in read["processes"]:
        print(f"    {row['role']:<9} pid {row['pid']:<7} RSS {row['rss']:6.1f}  PSS {row['pss']:6.1f}"
              f"  USS {row['uss']:6.1f}  shared {row['shared']:6.1f}  anon {row['anon']:6.1f}"
              + (f"  swap {row['swap']:.1f}" if row["swap"] else ""), flush=True)


def main():
    parser = common.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=200, help="cards per burst (default %(default)s)")
    parser.add_argument("--bursts", type=int, default=3, help="bursts in a row (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300, help="longest wait for a burst, s")
    parser.add_argument("--settle", type=float, default=2,
                        help="seconds to wait before each reading (default %(default)s)")
    parser.add_argument("--top", type=int, default=0,
                        help="print the worker's N largest mappings after the last burst")
    args = parser.parse_args()
    readings = []
    with common.Rig(args.rtt, args.tts_delay, args.workdir, args.keep) as rig:
        service = rig.service(login=False)
        time.sleep(args.settle)
        readings.append(("fresh", reading(service)))
        rig.sync_login(service)
        burst.warm_up(service)
        time.sleep(args.settle)
        readings.append(("after one card", reading(service)))
        for number in range(1, args.bursts + 1):
            done = burst.burst(service, args.cards, args.timeout)
            time.sleep(args.settle)
            read = reading(service)
            readings.append((f"after burst {number} of {args.cards}", read))
            print(f"# burst {number}: {burst.burst_line(done)}", file=sys.stderr, flush=True)
        for label, read in readings:
            print_reading(label, read)
        worker = [row["pid"] for row in readings[-1][1]["processes"] if row["role"] == "worker"]
        if args.top and worker:
            print("worker's largest mappings by PSS (MiB):")
            for size, name in top_mappings(worker[0], args.top):
                print(f"    {size:7.1f}  {name}")
        rig.stop(service)
    last = readings[-1][1]
    print(f"memory: worker PSS {last['worker_pss']:.1f} MiB and RSS sum {last['rss']:.1f} MiB"
          f" (PSS sum {last['pss']:.1f}) after {args.bursts} bursts of {args.cards} cards;"
          f" {common.machine()}")
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps({"measure": "memory", "readings": readings}) + "\n")


if __name__ == "__main__":
    main()
