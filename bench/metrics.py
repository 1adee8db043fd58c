"""What a Prometheus scrape of /metrics costs with 10,000 jobs in the job table.

    python bench/metrics.py --jobs 10000 --scrapes 50

Fills a fresh data dir's job table with --jobs finished cards (with the timings
a real card leaves: accepted, finished, spoken, synced), starts ankisync with
ANKISYNC_METRICS=on through ./run.sh, and prints:
  scrape: p50/p99 milliseconds of GET /metrics on one keep-alive connection;
  collect: milliseconds the web process's read of the table takes alone
           (timings.totals, in this process);
  web-rss: the web process's RSS before the first scrape and after the last
           (prometheus_client is imported at the first scrape).
"""

import http.client
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import common  # noqa: F401 (puts tests/ on the path)

sys.path.insert(0, str(common.ROOT))
import db  # noqa: E402
import jobs  # noqa: E402
import timings  # noqa: E402
from service import Service  # noqa: E402


def fill(path, count):
    jobs.init(path)
    now, rows = time.time(), []
    for n in range(count):
        created = now - random.uniform(0, 80_000)
        spoken = random.uniform(0.2, 3)
        synced = random.uniform(0.05, 2)
        failed = n % 50 == 0
        rows.append((uuid.uuid4().hex, "failure" if failed else "success", '{"word": "w"}',
                     created, created + 0.1, created + spoken + synced + 0.2, "done", 1,
                     None if failed else created + spoken + 0.1,
                     None if failed else created + spoken + synced + 0.2,
                     spoken, None if failed else synced))
    with db.write(path) as conn:
        conn.executemany(
            "INSERT INTO ankisync_jobs (id, status, request, created_at, started_at,"
            " completed_at, step, attempts, added_at, synced_at, tts_seconds, sync_seconds)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def web_pid(service):
    for pid in service.group_alive():
        try:
            command = [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                       if part]
            if command[-2:] == [b"ankisync.py", b"serve"]:
                return pid
        except FileNotFoundError:
            continue
    raise RuntimeError("no web process")


def main():
    parser = common.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ankisync-bench-metrics-"))
    service = Service(workdir / "svc", ANKISYNC_METRICS="on", ANKISYNC_LOG_LEVEL="WARNING",
                      ANKISYNC_TTS="none", ANKISYNC_RESULT_TTL=10 ** 9)
    service.data_dir.mkdir(mode=0o700, parents=True)
    path = service.data_dir / "ankisync.db"
    fill(path, args.jobs)
    collect = []
    for _ in range(args.scrapes):
        began = time.perf_counter()
        timings.totals(path)
        collect.append((time.perf_counter() - began) * 1000)
    try:
        service.start(timeout=120)
        pid = web_pid(service)
        before = rss_kib(pid)
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
        took, size = [], 0
        for _ in range(args.scrapes):
            began = time.perf_counter()
            conn.request("GET", "/metrics")
            answer = conn.getresponse()
            body = answer.read()
            took.append((time.perf_counter() - began) * 1000)
            if answer.status != 200:
                raise RuntimeError(f"/metrics answered {answer.status}: {body[:200]}")
            size = len(body)
        conn.close()
        after = rss_kib(pid)
    finally:
        service.kill()
    print(f"metrics jobs={args.jobs}: scrape p50 {statistics.median(took):.1f} ms,"
          f" p99 {common.percentile(took, 99):.1f} ms ({size} bytes);"
          f" collect p50 {statistics.median(collect):.1f} ms;"
          f" web-rss {before / 1024:.1f} MiB before the first scrape,"
          f" {after / 1024:.1f} MiB after")


if __name__ == "__main__":
    main()
