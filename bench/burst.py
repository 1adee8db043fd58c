"""A burst of cards to all synced, one ?async=false card, and the memory around them.

    python bench/burst.py --runs 3

TTS answers after --tts-delay (0.2 s) per clip; the sync server sits behind the
delay proxy, --rtt (0.1 s) away. Each run is a fresh service: its memory is
read freshly started (before any card or login), then it logs into a fresh
sync account and one warm-up card goes up (the first sync uploads the new
collection), then the burst is timed, then --async-cards single ?async=false
cards one after the other. Prints:
  burst-N: seconds from the first POST to the last job `success` with synced;
  async-false: seconds of one POST ?async=false answered ok and synced;
  memory: RSS and PSS sums of run.sh's whole process group, fresh and after the burst;
  pi-memory (--pi): the memory cgroup's peak, whether its limit was hit, and each
             process's CPUs and cgroup, read after the ?async=false cards.
"""

import statistics
import time

import common


def warm_up(service):
    """One card to the end: anki imported, collection open, the server holds it."""
    client = common.Client(service)
    try:
        status, body = client.post_card()
        if status != 202:
            raise RuntimeError(f"warm-up card refused: {status} {body}")
        common.wait_one(client, body["taskId"], timeout=120)
    finally:
        client.close()


def burst(service, cards=20, timeout=300.0):
    """Seconds from the first POST of `cards` cards to all of them synced."""
    client = common.Client(service)
    try:
        before = common.finished_count(client)
        bodies = [common.card() for _ in range(cards)]
        began = time.monotonic()
        task_ids = []
        for body in bodies:
            status, answer = client.post_card(body)
            if status != 202:
                raise RuntimeError(f"card refused: {status} {answer}")
            task_ids.append(answer["taskId"])
        posted = time.monotonic() - began
        seen, failed, left = common.wait_synced(client, task_ids, before, timeout)
    finally:
        client.close()
    done = cards - len(failed) - len(left)
    return {"cards": cards, "seconds": seen - began, "post_seconds": posted,
            "synced": done, "failed": len(failed), "timed_out": bool(left),
            "cards_per_s": done / (seen - began)}


def async_false(service, count=3):
    """Median seconds of `count` POST ?async=false, one after the other."""
    client = common.Client(service)
    times = []
    try:
        for _ in range(count):
            began = time.monotonic()
            status, body = client.post_card(query="?async=false")
            took = time.monotonic() - began
            if status != 200 or not body.get("synced"):
                raise RuntimeError(f"?async=false answered {status}: {body}")
            times.append(took)
    finally:
        client.close()
    return {"seconds": statistics.median(times), "min": min(times), "max": max(times),
            "count": count}


def burst_line(r):
    if r["timed_out"]:
        return (f"not done after {r['seconds']:.1f} s: {r['synced']}/{r['cards']} synced"
                f" ({r['cards_per_s']:.2f} cards/s)")
    return (f"{r['seconds']:.2f} s for {r['cards']} cards to all synced"
            f" (posting took {r['post_seconds'] * 1000:.0f} ms; {r['cards_per_s']:.2f} cards/s;"
            f" {r['failed']} failed)")


LINES = {
    "burst-20": burst_line,
    "async-false": lambda r: (f"{r['seconds']:.2f} s for one card (median of {r['count']},"
                              f" {r['min']:.2f}-{r['max']:.2f} s)"),
    "memory": lambda r: (f"fresh RSS {r['fresh_rss']:.0f} MiB / PSS {r['fresh_pss']:.0f} MiB;"
                         f" after the burst RSS {r['after_rss']:.0f} MiB / PSS"
                         f" {r['after_pss']:.0f} MiB (after: {r['after_processes']})"),
    "pi-memory": lambda r: (f"cgroup peak {r['peak_mib']:.0f} MiB of {r['limit_mib']:.0f} MiB;"
                            f" limit hit {r['limit_hits']:.0f} times, {r['oom_kills']:.0f} OOM"
                            f" kills; {r['processes']:.0f} processes, each on CPU 0 alone and"
                            f" in the cgroup"),
}


def run_once(rig, args, keep_service=False):
    """A fresh service through memory, warm-up, burst and ?async=false."""
    service = rig.service(login=False)
    try:
        time.sleep(2)  # let start-up settle
        fresh = common.memory_summary(service)
        rig.sync_login(service)
        warm_up(service)
        one_burst = burst(service, args.cards, args.timeout)
        after = common.memory_summary(service)
        waited = async_false(service, args.async_cards)
        pi = rig.pi_memory(service) if rig.pi else None
    except BaseException:
        rig.stop(service)
        raise
    if not keep_service:
        rig.stop(service)
    memory = {"fresh_rss": fresh["rss"], "fresh_pss": fresh["pss"], "after_rss": after["rss"],
              "after_pss": after["pss"], "fresh_processes": fresh["processes"],
              "after_processes": after["processes"]}
    results = {f"burst-{args.cards}": one_burst, "async-false": waited, "memory": memory}
    if pi:
        results["pi-memory"] = pi
    return (results, service) if keep_service else results


def add_arguments(parser):
    parser.add_argument("--cards", type=int, default=20,
                        help="cards in the burst (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=180,
                        help="longest wait for the burst, seconds (default %(default)s)")
    parser.add_argument("--async-cards", type=int, default=3,
                        help="?async=false cards timed per run (default %(default)s)")


def main():
    common.main(__doc__, add_arguments, run_once,
                lambda name: burst_line if name.startswith("burst-") else LINES[name])


if __name__ == "__main__":
    main()
