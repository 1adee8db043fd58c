"""What every bench script shares: the rig, the service, a client, /proc readings.

The rig is the real parts on loopback: Anki's own sync server behind a delay
proxy (so it looks `rtt` away), the fake Google TTS endpoint answering after
`tts_delay`, and ankisync itself started with `./run.sh` in its own process
group, exactly as tests/service.py starts it. Everything started here is
stopped on exit, on an exception, on Ctrl-C and on SIGTERM.
"""

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anki_server import SyncServer  # noqa: E402
from service import Service  # noqa: E402

ACCOUNTS = 60  # one fresh sync account per service started
GOOGLE_KEY = "bench-google-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024


def _exit_on_sigterm():
    # turn SIGTERM into SystemExit so that every `finally` stops what it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# --- command line ------------------------------------------------------------

def arg_parser(description, **defaults):
    """The options every bench script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=defaults.get("runs", 1),
                        help="repeat the measure N times and print the median (default %(default)s)")
    parser.add_argument("--rtt", type=float, default=0.1,
                        help="round trip to the sync server, seconds (default %(default)s)")
    parser.add_argument("--tts-delay", type=float, default=0.2,
                        help="seconds the fake TTS takes per clip (default %(default)s)")
    parser.add_argument("--workdir", help="where data dirs go (default: a new temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument("--json", help="also append the results, one JSON object a line, here")
    if defaults.get("pi"):  # only where the script hands it to Rig
        parser.add_argument("--pi", action="store_true",
                            help="Pi-sized: ankisync's processes on CPU 0 only, in a 512 MiB"
                                 " memory cgroup (needs root and the memory controller)")
    return parser


# --- the rig: sync server, proxy, fake TTS -----------------------------------

class Rig:
    """The parts around ankisync, shared by the runs of one script."""

    PI_MEMORY = 512 * MiB  # --pi: the memory cgroup's limit (RAM; swap is the machine's)

    def __init__(self, rtt=0.1, tts_delay=0.2, workdir=None, keep=False, pi=False):
        self.rtt, self.tts_delay = rtt, tts_delay
        self.pi = pi
        self.keep = keep or bool(workdir)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ankisync-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.accounts = iter(range(1, ACCOUNTS + 1))
        self.names = iter(range(1, 10_000))
        self._stack = contextlib.ExitStack()
        self.services = []

    def __enter__(self):
        _exit_on_sigterm()
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self):
        if self.pi:  # before anything starts: a --pi run never goes unconstrained
            self.pi_cgroups = self._pi_parent()
            print(f"# --pi: ankisync on CPU 0, in a {self.PI_MEMORY // MiB} MiB memory cgroup"
                  f" (cgroup v{self.pi_cgroups[0]}) under {self.pi_cgroups[1]}",
                  file=sys.stderr, flush=True)
        stack = self._stack
        users = {f"user{n}": "pass" for n in range(1, ACCOUNTS + 1)}
        self.sync_server = stack.enter_context(SyncServer(self.workdir / "syncserver", users))
        # proxy and TTS run as their own processes: the client's load must not
        # share a GIL with them
        self.sync_url = self._helper(
            [sys.executable, str(ROOT / "bench" / "delay_proxy.py"), "--delay",
             str(self.rtt / 2), "--upstream", f"127.0.0.1:{self.sync_server.port}"])
        self.tts_url = self._helper(
            [sys.executable, str(ROOT / "tests" / "fake_tts.py"), "--delay", str(self.tts_delay)])

    def _helper(self, argv):
        """Start a helper that prints its URL on its first line; return the URL."""
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        self._stack.callback(_kill_group, process)
        url = process.stdout.readline().decode().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"{argv[1]} did not start")
        return url

    def __exit__(self, *exc_info):
        for service in self.services:
            service.kill()
            self._pi_remove(service)
        self._stack.close()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"# work dir kept: {self.workdir}", file=sys.stderr)

    def service(self, notes=0, login=True, **settings):
        """A fresh ankisync install, started, logged into a fresh sync account.

        notes > 0: the collection holds that many Basic notes before the start.
        """
        name = f"svc{next(self.names)}"
        settings = {"ANKISYNC_SYNC_ENDPOINT": self.sync_url,
                    "ANKISYNC_GOOGLE_API_KEY": GOOGLE_KEY,
                    "ANKISYNC_GOOGLE_TTS_ENDPOINT": self.tts_url,
                    "ANKISYNC_LOG_LEVEL": "INFO",
                    "ANKISYNC_RETRY_DELAY": None, "ANKISYNC_RETRY_MAX_DELAY": None,
                    # the benchmarks post thousands of cards from one login on purpose
                    "ANKISYNC_CARD_BURST": 100_000, "ANKISYNC_MAX_QUEUED": 100_000,
                    **settings}
        service = Service(self.workdir / name, **settings)
        self.services.append(service)
        if self.pi:
            self._pi_enter(service, name)
        if notes:
            make_collection(service.data_dir, notes)
        service.start(timeout=120)
        if self.pi:
            self.pi_check(service)
        service.login()
        if login:
            self.sync_login(service)
        return service

    def sync_login(self, service):
        """`ankisync.py login` into a sync account no other service has used."""
        service.sync_login(f"user{next(self.accounts)}")

    def stop(self, service):
        """Stop a service for good (SIGKILL to its group: the bench is done with it)."""
        service.kill()
        with contextlib.suppress(Exception):
            service.process.wait(10)
            service.process.stdout.close()
        self._pi_remove(service)
        self.services.remove(service)

    # --pi: a memory cgroup per service, made under the one this bench runs in
    # (so whatever limits the bench still holds), with run.sh pinned to CPU 0.

    def _pi_parent(self):
        """(cgroup version, mount point, this process's cgroup path) for --pi, or exit saying
        what is missing."""
        missing = []
        if os.geteuid() != 0:
            missing.append("root (it makes a cgroup per service)")
        if not shutil.which("taskset"):
            missing.append("taskset (Debian: util-linux)")
        own = {}  # controllers ("v2" for the unified hierarchy): this process's cgroup
        for line in _read("/proc/self/cgroup").splitlines():
            number, controllers, path = line.split(":", 2)
            own["v2" if number == "0" else controllers] = path
        v1 = next((path for key, path in own.items() if "memory" in key.split(",")), None)
        mounts = [line.split()[1:4] for line in _read("/proc/self/mounts").splitlines()]
        found = next(((1, Path(mount), v1) for mount, fstype, options in mounts
                      if fstype == "cgroup" and "memory" in options.split(",") and v1), None)
        for mount, fstype, _ in mounts:
            if fstype == "cgroup2" and "v2" in own and not found:
                controls = Path(mount + own["v2"]) / "cgroup.subtree_control"
                if "memory" in _read(controls).split():
                    found = (2, Path(mount), own["v2"])
                else:
                    missing.append(f"the memory controller in {controls} (cgroup v2; a cgroup"
                                   " that holds processes cannot enable it for its children)")
        if not found and not missing:
            missing.append("a memory cgroup controller (none is mounted)")
        if missing:
            raise SystemExit("--pi needs " + "; ".join(missing))
        return found

    def _pi_enter(self, service, name):
        """Make the service's cgroup with its limit; run.sh joins it as it starts."""
        version, mount, own = self.pi_cgroups
        path = mount / own.lstrip("/") / f"ankisync-bench-{os.getpid()}-{name}"
        limit = path / ("memory.limit_in_bytes" if version == 1 else "memory.max")
        try:
            path.mkdir()
            service.pi_cgroup = path
            limit.write_text(str(self.PI_MEMORY))
        except OSError as error:
            raise SystemExit(f"--pi: could not make the memory cgroup {path}: {error}")
        # run.sh is a bash script: bash sources BASH_ENV in its own process before
        # the script's first line, so run.sh is inside before it forks anything
        service.env.update(BASH_ENV=str(ROOT / "bench" / "pi_cgroup.sh"),
                           BENCH_PI_CGROUP=str(path))

    def pi_check(self, service):
        """Each process of the service (its group and its cgroup): CPUs allowed and cgroup.

        One line per process; raises when one is not on CPU 0 alone or not in the cgroup.
        """
        version, mount, _ = self.pi_cgroups
        path = service.pi_cgroup
        expected = "/" + str(path.relative_to(mount))
        pids = set(group_pids(service)) | {int(p) for p in _read(path / "cgroup.procs").split()}
        lines, wrong = [], []
        for pid in sorted(pids):
            status = dict(line.split(":", 1) for line in _read(f"/proc/{pid}/status").splitlines())
            cpus = status.get("Cpus_allowed_list", "?").strip()
            if not status:
                continue  # gone meanwhile
            groups = [line.split(":", 2) for line in _read(f"/proc/{pid}/cgroup").splitlines()]
            inside = any(p == expected and ("memory" in c.split(",") if version == 1 else n == "0")
                         for n, c, p in groups)
            lines.append(f"{pid} {role(pid)}: CPUs {cpus}, {'in' if inside else 'NOT IN'} cgroup")
            if cpus != "0" or not inside:
                wrong.append(lines[-1])
        if wrong or not lines:
            raise RuntimeError(f"--pi: not pinned or not in {path}: {wrong or 'no process'}")
        return lines

    def pi_memory(self, service, check=True):
        """The service's cgroup now: peak memory, how often the limit was hit, OOM kills;
        and (check) how many processes pi_check() found right, its lines printed."""
        path = service.pi_cgroup
        processes = self.pi_check(service) if check else []
        if processes:
            print(f"# --pi {path.name}: " + "; ".join(processes), file=sys.stderr, flush=True)

        def keyed(name):
            lines = _read(path / name).splitlines()
            return {key: int(value) for key, value in (line.split() for line in lines)}

        if self.pi_cgroups[0] == 1:
            peak = int(_read(path / "memory.max_usage_in_bytes") or 0)
            hits = int(_read(path / "memory.failcnt") or 0)
            ooms = keyed("memory.oom_control").get("oom_kill", 0)
        else:
            peak = int(_read(path / "memory.peak") or 0)  # kernel 5.19 or newer
            events = keyed("memory.events")
            hits, ooms = events.get("max", 0), events.get("oom_kill", 0)
        return {"peak_mib": peak / MiB, "limit_mib": self.PI_MEMORY / MiB, "limit_hits": hits,
                "oom_kills": ooms, "processes": len(processes)}

    def _pi_remove(self, service):
        """Kill what is left in the service's cgroup (all of it ours) and remove the cgroup."""
        path = getattr(service, "pi_cgroup", None)
        if path is None:
            return
        with contextlib.suppress(Exception):
            usage = self.pi_memory(service, check=False)
            if usage["limit_hits"] or usage["oom_kills"]:
                print(f"# --pi {path.name}: the {usage['limit_mib']:.0f} MiB limit was hit"
                      f" {usage['limit_hits']} times, {usage['oom_kills']} OOM kills; peak"
                      f" {usage['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 10
        while True:
            for pid in _read(path / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # busy while the killed processes are being reaped
                if time.monotonic() > deadline:
                    print(f"# --pi: could not remove {path}", file=sys.stderr, flush=True)
                    break
                time.sleep(0.05)
        service.pi_cgroup = None


def _kill_group(process):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    if process.stdout:
        process.stdout.close()


def make_collection(data_dir, count):
    """DATA_DIR/collection.anki2 with `count` Basic notes, made with anki's own API."""
    from anki.collection import AddNoteRequest, Collection
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    col = Collection(str(data_dir / "collection.anki2"))
    try:
        notetype = col.models.by_name("Basic")
        deck_id = col.decks.id("Default")
        requests = []
        for i in range(count):
            note = col.new_note(notetype)
            note["Front"] = f"front {i} {secrets.token_hex(4)}"
            note["Back"] = f"back {i}: some text of the size a real card has, and a bit more"
            requests.append(AddNoteRequest(note=note, deck_id=deck_id))
        col.add_notes(requests)
    finally:
        col.close()


# --- cards and a keep-alive client ---------------------------------------------

_TAG = secrets.token_hex(3)
_serial = iter(range(1, 10**9))


def card():
    """A card no other card of this bench shares: its clips are not cached."""
    n = next(_serial)
    word = f"bench{_TAG}p{os.getpid()}x{n}"  # a forked client makes its own words
    return {"word": word, "partOfSpeech": "noun", "guideWord": "", "englishDefinition":
            f"the {n}th thing a benchmark made", "definitionTranslation": "", "cefrLevel": "",
            "code": "", "englishExample": f"She told the <b>{{{{c1::{word}}}}}</b> story {n}.",
            "exampleTranslation": f"Sie erzählte die Geschichte {n}."}


class Client:
    """One keep-alive HTTP/1.1 connection to the service, with its token."""

    def __init__(self, service, timeout=120):
        self.port = service.port
        self.token = service.token
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def call(self, method, path, body=None):
        """(status, parsed body) of one request on the kept connection."""
        headers = {"x-access-token": self.token}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        answer = self.conn.getresponse()
        text = answer.read()
        return answer.status, (json.loads(text) if text else None)

    def post_card(self, body=None, query=""):
        return self.call("POST", "/api/v1/clozeNotes" + query, body or card())

    def job(self, task_id):
        status, body = self.call("GET", f"/api/v1/tasks/{task_id}")
        if status != 200:
            raise RuntimeError(f"GET task {task_id}: {status} {body}")
        return body

    def close(self):
        self.conn.close()


def finished_count(client):
    """How many jobs of the service are finished (success or failure), from /health."""
    status, body = client.call("GET", "/api/v1/health")
    if status != 200:
        raise RuntimeError(f"health: {status} {body}")
    return body["jobs"].get("success", 0) + body["jobs"].get("failure", 0)


def wait_synced(client, task_ids, before, timeout, poll=0.02):
    """Wait until every job is `success` with result.synced; when that was seen.

    `before` is finished_count() from before the jobs were posted. Polls the
    health counts (one cheap request) until all the jobs are finished, then
    looks at each job once; one finished but not yet synced is polled alone.
    Returns (monotonic time, failed ids, ids not synced when the timeout hit).
    """
    deadline = time.monotonic() + timeout
    while finished_count(client) < before + len(task_ids) and time.monotonic() < deadline:
        time.sleep(poll)
    seen = time.monotonic()
    failed, waiting = [], []
    for task_id in task_ids:
        while True:
            job = client.job(task_id)
            if job["status"] == "failure":
                failed.append(task_id)
                break
            if job["status"] == "success" and (job["result"] or {}).get("synced"):
                break
            if time.monotonic() > deadline:
                waiting.append(task_id)
                break
            time.sleep(poll)
            seen = time.monotonic()
    return seen, failed, waiting


def wait_one(client, task_id, timeout=120, poll=0.02):
    """Wait for one job to end synced; the monotonic time it was seen so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(task_id)
        if job["status"] == "success" and (job["result"] or {}).get("synced"):
            return time.monotonic()
        if job["status"] == "failure":
            break
        time.sleep(poll)
    raise RuntimeError(f"job {task_id} did not end synced: {client.job(task_id)}")


# --- /proc readings ---------------------------------------------------------------

def _read(path):
    try:
        return Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def group_pids(service):
    return service.group_alive()


def role(pid):
    """web, worker, or run.sh: what a pid of the service's group is."""
    cmd = _read(f"/proc/{pid}/cmdline").split("\0")
    if "serve" in cmd:
        return "web"
    if "worker" in cmd:
        return "worker"
    return "run.sh" if any(part.endswith("run.sh") for part in cmd) else (cmd[0] or "?")


def memory(pids):
    """{pid: (rss bytes, pss bytes)}."""
    result = {}
    for pid in pids:
        rss = pss = 0
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
        if rss:
            result[pid] = (rss, pss)
    return result


def memory_summary(service):
    """RSS and PSS sums of the whole group, in MiB, with the web process's alone."""
    mem = memory(group_pids(service))
    web = [rss for pid, (rss, _) in mem.items() if role(pid) == "web"]
    roles = {}
    for pid, (rss, _) in mem.items():
        roles.setdefault(role(pid), []).append(round(rss / MiB, 1))
    return {"rss": sum(r for r, _ in mem.values()) / MiB,
            "pss": sum(p for _, p in mem.values()) / MiB,
            "web_rss": (web[0] / MiB) if web else float("nan"),
            "processes": roles}


def cpu_ticks(pids):
    """utime + stime of the pids, in seconds."""
    total = 0
    for pid in pids:
        fields = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def io_counters(pids):
    """Sum of write_bytes (to storage) and wchar (all write calls) of the pids."""
    total = {"write_bytes": 0, "wchar": 0}
    for pid in pids:
        for line in _read(f"/proc/{pid}/io").splitlines():
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value)
    return total


def files_state(directory):
    """{relative path: (size, mtime_ns)} of every file under directory."""
    state = {}
    for path in Path(directory).rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                stat = path.stat()
                state[str(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns)
    return state


# --- repeating and printing --------------------------------------------------------

def percentile(values, p):
    """The p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median_of(results):
    """Per key, the median of the numbers across runs, with their max as KEY_max.

    Lists are merged (every item any run saw); other values come from the last run.
    """
    merged = {}
    for key, value in results[-1].items():
        values = [r.get(key) for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = statistics.median(values)
            merged[f"{key}_max"] = max(values)
        elif all(isinstance(v, list) for v in values):
            merged[key] = sorted({item for v in values for item in v})
        else:
            merged[key] = value
    return merged


def report(name, results, line, json_path=None):
    """Print the measure's one line (median over runs), and the runs' own values."""
    merged = median_of(results)
    runs = f" [median of {len(results)} runs]" if len(results) > 1 else ""
    print(f"{name}: {line(merged)}{runs}", flush=True)
    if len(results) > 1:
        for number, result in enumerate(results, 1):
            print(f"    run {number}: {line(result)}", file=sys.stderr, flush=True)
    if json_path:
        with open(json_path, "a") as out:
            out.write(json.dumps({"measure": name, "median": merged, "runs": results}) + "\n")
    return merged


def main(doc, add_arguments, run_once, line_for):
    """A measure script's whole run: parse, measure N times in one rig, print the medians."""
    parser = arg_parser(doc.splitlines()[0], pi=True)
    add_arguments(parser)
    args = parser.parse_args()
    with Rig(args.rtt, args.tts_delay, args.workdir, args.keep, args.pi) as rig:
        runs = [run_once(rig, args) for _ in range(args.runs)]
    for name in runs[0]:
        report(name, [run[name] for run in runs], line_for(name), args.json)


def machine():
    """One line about this machine, for the results."""
    mem = next((line.split()[1] for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:")), "0")
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), "?")
    return (f"{os.cpu_count()} CPUs ({model}), {int(mem) / 1024 / 1024:.1f} GiB RAM,"
            f" Python {sys.version.split()[0]}")
