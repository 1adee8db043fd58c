"""Enqueue latency and throughput of POST /api/v1/clozeNotes, and the web process's RSS.

    python bench/enqueue.py --runs 3

Prints one line per measure:
  enqueue-1: p50/p99 of one client posting over one keep-alive connection;
  enqueue-16: throughput and p99 of 16 clients, each with its own connection,
              spread over --procs client processes so that the client's GIL is
              not what limits the figure;
  web-rss: the web process's RSS after that load.
The worker runs as usual meanwhile (it speaks, adds and syncs what is posted).
"""

import multiprocessing
import resource
import threading
import time

import common


def enqueue_one_client(service, requests=2000, warmup=200):
    """p50/p99 in ms of `requests` posts, one after the other, on one connection."""
    client = common.Client(service)
    errors = 0
    web = [pid for pid in common.group_pids(service) if common.role(pid) == "web"]
    try:
        for _ in range(warmup):
            client.post_card()
        cpu = common.cpu_ticks(web)
        latencies = []
        for _ in range(requests):
            body = common.card()
            began = time.perf_counter()
            status, _ = client.post_card(body)
            latencies.append(time.perf_counter() - began)
            errors += status != 202
        cpu = common.cpu_ticks(web) - cpu
    finally:
        client.close()
    return {"p50_ms": common.percentile(latencies, 50) * 1000,
            "p99_ms": common.percentile(latencies, 99) * 1000,
            "mean_ms": sum(latencies) / len(latencies) * 1000,
            "web_cpu_ms": cpu / requests * 1000, "requests": requests, "errors": errors}


def _client_thread(service, start_at, stop_at, out):
    client = common.Client(service)
    latencies, errors = [], 0
    try:
        for _ in range(5):  # connection made and warm before the start
            client.post_card()
        time.sleep(max(0, start_at - time.monotonic()))
        while time.monotonic() < stop_at:
            body = common.card()
            began = time.monotonic()
            status, _ = client.post_card(body)
            latencies.append((began, time.monotonic() - began))
            errors += status != 202
    finally:
        client.close()
    out.append((latencies, errors))


def _client_process(service, threads, start_at, stop_at, results):
    out = []
    workers = [threading.Thread(target=_client_thread, args=(service, start_at, stop_at, out))
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put((out, usage.ru_utime + usage.ru_stime))


def enqueue_concurrent(service, clients=16, procs=4, duration=5.0):
    """Throughput (req/s) and p50/p99 (ms) of `clients` posting for `duration` seconds."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.monotonic() + 1.5
    stop_at = start_at + duration
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    processes = [context.Process(target=_client_process, daemon=True,
                                 args=(service, n, start_at, stop_at, results))
                 for n in shares if n]
    for process in processes:
        process.start()
    try:
        gathered = [results.get(timeout=duration + 120) for _ in processes]
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    latencies = [lat for out, _ in gathered for lats, _ in out for lat in lats]
    errors = sum(err for out, _ in gathered for _, err in out)
    client_cpu = sum(cpu for _, cpu in gathered)
    ends = [began + took for began, took in latencies]
    wall = max(ends) - start_at if ends else duration
    took = [t for _, t in latencies]
    return {"rps": len(took) / wall, "p50_ms": common.percentile(took, 50) * 1000,
            "p99_ms": common.percentile(took, 99) * 1000, "requests": len(took),
            "errors": errors, "client_cpu_pct": client_cpu / wall * 100, "clients": clients,
            "procs": len(processes)}


LINES = {
    "enqueue-1": lambda r: (f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
                            f" (mean {r.get('mean_ms', 0):.2f} ms; web process CPU"
                            f" {r.get('web_cpu_ms', 0):.2f} ms per request; {r['requests']}"
                            f" requests, {r['errors']} errors)"),
    "enqueue-16": lambda r: (f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms,"
                             f" p99 {r['p99_ms']:.1f} ms ({r['requests']} requests,"
                             f" {r['errors']} errors, {r['clients']} clients in"
                             f" {r['procs']} processes using {r['client_cpu_pct']:.0f}%"
                             f" of a core)"),
    "web-rss": lambda r: (f"web process {r['web_rss']:.1f} MiB RSS after the enqueue load"
                          f" (fresh: {r['web_rss_fresh']:.1f} MiB)"),
}


def run_once(rig, args):
    """One fresh service: the three measures."""
    service = rig.service()
    try:
        fresh = common.memory_summary(service)["web_rss"]
        one = enqueue_one_client(service, args.requests, args.warmup)
        many = enqueue_concurrent(service, args.clients, args.procs, args.duration)
        web = {"web_rss": common.memory_summary(service)["web_rss"], "web_rss_fresh": fresh}
    finally:
        rig.stop(service)
    return {"enqueue-1": one, "enqueue-16": many, "web-rss": web}


def add_arguments(parser):
    parser.add_argument("--requests", type=int, default=2000,
                        help="posts timed with one client (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="posts before timing (default %(default)s)")
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent clients (default %(default)s)")
    parser.add_argument("--procs", type=int, default=4,
                        help="client processes the clients are spread over (default %(default)s)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds the concurrent clients post (default %(default)s)")


def main():
    common.main(__doc__, add_arguments, run_once, LINES.__getitem__)


if __name__ == "__main__":
    main()
