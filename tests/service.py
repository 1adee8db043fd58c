"""ankisync as a user runs it: `./run.sh` in a process group, spoken to over HTTP."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from anki_server import free_port

ROOT = Path(__file__).resolve().parent.parent

CARD = {
    "word": "extraordinary",
    "partOfSpeech": "adjective",
    "guideWord": "VERY UNUSUAL",
    "englishDefinition": "very unusual, special, unexpected, or strange",
    "definitionTranslation": "außergewöhnlich",
    "cefrLevel": "",
    "code": "",
    "englishExample": "He told the <b>{{c1::extraordinary}}</b> story.",
    "exampleTranslation": "Er erzählte die außergewöhnliche Geschichte.",
}


def request(method, url, body=None, headers=None, raw=None):
    """(status, headers, parsed JSON body or None) of one HTTP request."""
    headers = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:
            status, got, text = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, got, text = error.code, error.headers, error.read()
    return status, got, (json.loads(text) if text else None)


def wait_until(condition, what, timeout=30, every=0.02):
    """condition()'s first true value; fails naming `what` (a text, or a callable giving one,
    such as the service's log) once `timeout` seconds pass without one."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what() if callable(what) else what}")
        time.sleep(every)


class Service:
    """One ankisync install: its own data dir and port, started with run.sh."""

    def __init__(self, data_dir, **settings):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, ANKISYNC_DATA_DIR=str(self.data_dir),
                        ANKISYNC_LISTEN=f"127.0.0.1:{self.port}",
                        ANKISYNC_RETRY_DELAY="0.2", ANKISYNC_RETRY_MAX_DELAY="1",
                        ANKISYNC_LOG_LEVEL="DEBUG", ANKISYNC_ANKICONNECT_LISTEN="",
                        # never the real dictionary: a fuzzed wordAudioUrl stays on loopback
                        ANKISYNC_AUDIO_URL_HOSTS="127.0.0.1:9")
        self.env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        for key, value in settings.items():  # None unsets a variable
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = str(value)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process = None
        self.api_key = None
        self.token = None

    def start(self, timeout=60):
        """Start `./run.sh`; the API key it prints on first start is kept."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(ROOT / "run.sh")], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=log, start_new_session=True)
        if self.api_key is None:
            self.api_key = self.process.stdout.readline().decode().strip()
            assert self.api_key.startswith("ak_"), self.logs()

        def serving():
            assert self.process.poll() is None, self.logs()
            try:
                return request("GET", self.url + "/")[0] == 200 and self.worker_alive()
            except OSError:
                return False

        wait_until(serving, lambda: "ankisync to start:\n" + self.logs(), timeout, every=0.1)
        return self

    def worker_alive(self):
        # written, not only created: a test may read the pid as soon as start() returns
        pid_file = self.data_dir / "worker.pid"
        return pid_file.exists() and pid_file.read_text().strip() != ""

    def stop(self, sig=signal.SIGTERM, timeout=45):
        """Signal run.sh; returns its exit status. Kills the group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return self.process and self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        finally:
            self.process.stdout.close()

    def kill(self):
        """Whatever is left of the process group, gone (teardown)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def group_alive(self):
        """Pids still in run.sh's process group."""
        out = subprocess.run(["pgrep", "-g", str(self.process.pid)], capture_output=True,
                             text=True).stdout
        return [int(pid) for pid in out.split()]

    def logs(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args, stdin=""):
        """Run `python ankisync.py ARGS` against this install."""
        return subprocess.run([sys.executable, str(ROOT / "ankisync.py"), *args], cwd=ROOT,
                              env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=60)

    # --- the HTTP API ---

    def call(self, method, path, body=None, headers=None, token=True, **kwargs):
        headers = dict(headers or {})
        if token is True:
            token = self.token or self.login()
        if token:
            headers["x-access-token"] = token
        return request(method, self.url + path, body, headers, **kwargs)

    def login(self):
        status, _, body = request("POST", self.url + "/api/v1/login", {"key": self.api_key})
        assert status == 201, body
        self.token = body["accessToken"]
        return self.token

    def post_card(self, card=None, query=""):
        status, _, body = self.call("POST", "/api/v1/clozeNotes" + query, card or CARD)
        return status, body

    def job(self, task_id):
        status, _, body = self.call("GET", f"/api/v1/tasks/{task_id}")
        assert status == 200, body
        return body

    def wait(self, task_id, until=("success", "failure"), timeout=60):
        """Poll the job until its status is in `until`; the statuses seen, in order."""
        seen = []

        def done():
            job = self.job(task_id)
            if not seen or seen[-1] != job["status"]:
                seen.append(job["status"])
            return job if job["status"] in until else None

        job = wait_until(done, lambda: f"job {task_id} in {until}, still {seen}:\n{self.logs()}",
                         timeout)
        return job, seen

    def sync_login(self, username, password="pass"):
        result = self.cli("login", username, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
        return result
