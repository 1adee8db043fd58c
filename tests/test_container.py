"""The container image, built and run with Docker's real daemon (README: Install with Docker).

The build starts from a Debian bookworm image made here with mmdebstrap (no image
registry can be reached) and reaches PyPI and Debian through the host's network;
behind a TLS-inspecting proxy the host's CA bundle goes in as a BuildKit secret.
The container runs with --network host, so that it reaches the local sync server.
Skipped without a Docker daemon, except in CI (.ci/run starts one), where it runs.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

import helpers
from anki_server import download_collection, free_port, notes_in
from conftest import GOOGLE_KEY
from service import ROOT, request, wait_until
from version import __version__

pytestmark = pytest.mark.slow  # an image build (half a minute with a warm daemon) and runs

BASE = "ankisync-test/bookworm-slim"  # made once per Docker daemon, kept for later runs
IMAGE = "ankisync-test:latest"
BUILD_TIMEOUT = 1200  # seconds: a cold build on a slow link downloads ~150 MB
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # a machine's own CAs (Debian)
OWNER = 1234  # the bind-mounted data folder's owner: the container must run as it
BURST = 20
TIMINGS = {}


def docker_cli():
    """Debian's docker.io client (.ci/run installs it) first: it builds with BuildKit
    by itself, where a newer client needs the buildx plugin."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")


def docker(*args, check=True, timeout=120, **kwargs):
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, DOCKER_BUILDKIT="1"), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def daemon():
    """Docker's daemon, answering; a skip without one (a failure in CI)."""
    answers = docker_cli() and subprocess.run([docker_cli(), "info"], capture_output=True,
                                              timeout=60).returncode == 0
    if not answers:
        message = "no Docker daemon answers (DOCKER_HOST, or install docker.io and start dockerd)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the container tests")
        pytest.skip(message)


@pytest.fixture(scope="module")
def base_image(daemon, tmp_path_factory):
    """A bookworm image as debian:bookworm-slim is made (minbase, no docs), from Debian's
    own mirror with mmdebstrap (~20 s), imported once."""
    if docker("image", "inspect", BASE, check=False).returncode == 0:
        return BASE
    if not shutil.which("mmdebstrap"):
        pytest.fail("install mmdebstrap to make the base image (apt-get install mmdebstrap)")
    tarball = tmp_path_factory.mktemp("base") / "bookworm.tar"
    excludes = [f"--dpkgopt=path-exclude=/usr/share/{name}/*" for name in
                ("man", "doc", "info", "locale")]
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase",
                    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr", *excludes,
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright", "bookworm",
                    str(tarball)], check=True, timeout=600, capture_output=True)
    docker("import", str(tarball), BASE, timeout=300)
    return BASE


@pytest.fixture(scope="module")
def image(base_image):
    """The image of this checkout, built as the README says, on the local base."""
    secret = ["--secret", f"id=ca,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []
    started = time.monotonic()
    docker("build", "--network", "host", *secret, "--build-arg", f"BASE_IMAGE={base_image}",
           "--build-arg", f"VERSION={__version__}", "--tag", IMAGE, str(ROOT),
           timeout=BUILD_TIMEOUT)
    TIMINGS["build"] = time.monotonic() - started
    print(f"\nimage built in {TIMINGS['build']:.0f} s;"
          f" {docker('image', 'ls', IMAGE, '--format', '{{.Size}}').stdout.strip()}")
    return IMAGE


def test_the_image_says_its_version_and_holds_no_build_secret(image, tmp_path):
    labels = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert docker("run", "--rm", "--network", "none", image, "--version").stdout.strip() \
        == f"ankisync {__version__}"
    # no compiler, no pip: the build stage's tools stay in the build stage
    tools = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                   "ls /usr/bin/gcc /usr/bin/cc /opt/ankisync/.venv/bin/pip 2>/dev/null; true")
    assert tools.stdout.strip() == ""
    # The certificates this machine added to the bundle the build was given (the proxy's
    # CA: update-ca-certificates takes them from LOCAL_CAS): in no file of the image and
    # not in its history. (A machine that added none has nothing to look for.)
    given = set(pems(CA_BUNDLE.read_text())) if CA_BUNDLE.is_file() else set()
    extra = [pem for path in sorted(LOCAL_CAS.glob("*.crt")) for pem in pems(path.read_text())
             if pem in given]
    history = docker("history", "--no-trunc", image).stdout
    container = docker("create", image).stdout.strip()
    try:
        exported = tmp_path / "image.tar"
        docker("export", "--output", str(exported), container, timeout=300)
        needles = [base64.b64decode("".join(pem.splitlines()[1:-1]))[-64:] for pem in extra]
        needles += [pem.splitlines()[1].encode() for pem in extra]
        with tarfile.open(exported) as files:
            for member in files:
                if member.isfile():
                    content = files.extractfile(member).read()
                    assert not any(needle in content for needle in needles), member.name
    finally:
        docker("rm", container)
    assert not any(pem.splitlines()[1] in history for pem in extra)


def test_every_requirement_has_a_wheel_for_arm64(tmp_path):
    """The same Dockerfile builds for arm64 (a Pi 4 or 5, most NAS): pip finds a wheel of
    every pinned requirement for Python 3.11 on bookworm's glibc (2.36), nothing to compile."""
    platforms = [f"--platform=manylinux_2_{minor}_aarch64" for minor in range(17, 37)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", *platforms, "--only-binary=:all:",
         "--python-version", "3.11", "--requirement", str(ROOT / "requirements.txt"),
         "--dest", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    wheels = {path.name.split("-")[0].lower() for path in tmp_path.glob("*.whl")}
    assert {"anki", "nh3", "grpcio"} <= wheels, wheels


def test_the_build_context_leaves_secrets_and_data_out(base_image, tmp_path):
    """`COPY . .` takes the folder compose.yaml sits in, where the user keeps data/,
    secrets/ and maybe backups: none of it may end up in an image, which anyone it is
    given to can read.
    The project's .dockerignore, on a folder such as a user's, with the same COPY."""
    context = tmp_path / "ankisync"
    for name in ("ankisync.py", "data/credentials.json", "secrets/google_api_key", ".env",
                 ".venv/bin/python", "tests/test_api.py", "ankiconnect/server.py",
                 "backups/20261130T000000Z-jobs.db", "words.apkg",
                 "replaced-20261130T000000Z/collection.anki2",
                 "ankiconnect/__pycache__/server.cpython-311.pyc"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("x")
    shutil.copy(ROOT / ".dockerignore", context)
    (context / "Dockerfile").write_text(f"FROM {base_image}\nWORKDIR /app\nCOPY . .\n")
    tag = "ankisync-test-context:latest"
    docker("build", "--network", "none", "--tag", tag, str(context))
    try:
        copied = docker("run", "--rm", "--network", "none", tag, "find", ".", "-type", "f")
    finally:
        docker("image", "rm", tag, check=False)
    assert sorted(copied.stdout.split()) == ["./ankiconnect/server.py", "./ankisync.py"]


def pems(text):
    """The PEM certificates of a bundle, each as BEGIN line, base64 lines, END line."""
    found, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if line == "-----BEGIN CERTIFICATE-----":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "-----END CERTIFICATE-----":
                found.append("\n".join(current))
                current = None
    return found


class Container:
    """One ankisync container on the host's network, with a bind-mounted data folder."""

    def __init__(self, image, data_dir, name, **settings):
        self.image, self.data_dir, self.name = image, data_dir, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = {"ANKISYNC_LISTEN": f"127.0.0.1:{self.port}",
                         "ANKISYNC_ANKICONNECT_LISTEN": "", "ANKISYNC_RETRY_DELAY": "0.2",
                         "ANKISYNC_RETRY_MAX_DELAY": "1", "ANKISYNC_LOG_LEVEL": "DEBUG",
                         **settings}
        self.token = None

    def options(self, *extra):
        options = ["--network", "host", "--volume", f"{self.data_dir}:/data", *extra]
        for name, value in self.settings.items():
            options += ["--env", f"{name}={value}"]
        return options

    def command(self, *args, **kwargs):
        """`docker run --rm IMAGE ARGS`: one ./run.sh command, as the README gives it."""
        return docker("run", "--rm", *self.options(*kwargs.pop("options", ())), self.image,
                      *args, **kwargs)

    def start(self):
        # health checked every second here (30 s in the image) so that the test sees it
        docker("run", "--detach", "--name", self.name, "--restart", "unless-stopped",
               "--health-interval", "1s", "--health-retries", "1", "--health-start-period",
               "60s", *self.options(), self.image)
        return self

    def state(self):
        return json.loads(docker("inspect", self.name).stdout)[0]["State"]

    def health(self):
        return self.state().get("Health", {}).get("Status")

    def wait_health(self, status, timeout=120):
        wait_until(lambda: self.health() == status,
                   lambda: f"container {status}, it is {self.health()}:\n{self.logs()}",
                   timeout, every=0.2)

    def logs(self):
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, script):
        return docker("exec", self.name, "sh", "-c", script)

    def remove(self):
        docker("rm", "--force", self.name, check=False)

    def call(self, method, path, body=None):
        if self.token is None:
            status, _, pair = request("POST", self.url + "/api/v1/login", {"key": self.api_key})
            assert status == 201, pair
            self.token = pair["accessToken"]
        return request(method, self.url + path, body, {"x-access-token": self.token})

    def wait(self, task_id, timeout=120):
        def done():
            status, _, job = self.call("GET", f"/api/v1/tasks/{task_id}")
            assert status == 200, job
            return job if job["status"] in ("success", "failure") else None
        return wait_until(done, lambda: f"task {task_id}:\n{self.logs()}", timeout, every=0.1)


@pytest.fixture
def make_container(image, tmp_path):
    made = []

    def make(**settings):
        data = tmp_path / f"data{len(made)}"
        data.mkdir(mode=0o700)
        os.chown(data, OWNER, OWNER)  # a user's folder on the host
        container = Container(image, data, f"ankisync-test-{os.getpid()}-{len(made)}",
                              **settings)
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove()


def owners(folder):
    return {(path.stat().st_uid, path.stat().st_gid) for path in [folder, *folder.rglob("*")]}


def test_the_container_runs_as_the_data_folders_owner_or_puid_never_as_root(make_container):
    # a folder Docker made (root's): given to PUID:PGID
    container = make_container()
    os.chown(container.data_dir, 0, 0)
    container.command("api-key", options=("--env", "PUID=2345", "--env", "PGID=2346"))
    assert owners(container.data_dir) == {(2345, 2346)}
    # then the folder's owner, without PUID
    key = container.command("api-key").stdout.strip()
    assert key.startswith("ak_") and owners(container.data_dir) == {(2345, 2346)}
    # --user: as that user, when the folder is theirs
    container.command("api-key", options=("--user", "2345:2346"))
    assert owners(container.data_dir) == {(2345, 2346)}
    # a PUID that does not own the folder, or root: refused, saying what to do
    refused = container.command("api-key", options=("--env", "PUID=1000"), check=False)
    assert refused.returncode == 1 and "belongs to user 2345, not PUID=1000" in refused.stderr
    refused = container.command("api-key", options=("--env", "PUID=0"), check=False)
    assert refused.returncode == 1 and "does not run as root" in refused.stderr
    assert owners(container.data_dir) == {(2345, 2346)}


def on_server(tmp_path, sync_server, account):
    """word -> how many notes hold it, in a fresh collection synced from the server."""
    col = download_collection(tmp_path / f"device-{time.monotonic_ns()}", sync_server.url,
                              account, "pass")
    try:
        words = [note["fields"]["Word"] for note in notes_in(col)]
    finally:
        col.close()
    return {word: words.count(word) for word in words}


def test_the_container_syncs_cards_survives_a_kill_and_reports_a_dead_worker(
        make_container, sync_server, account, tmp_path):
    container = make_container(ANKISYNC_SYNC_ENDPOINT=sync_server.url, ANKISYNC_TTS="espeak")
    # `docker compose run --rm ankisync login USER`, the password from a secret file
    secret = tmp_path / "sync_password"
    secret.write_text("pass\n")
    secret.chmod(0o600)
    os.chown(secret, OWNER, OWNER)
    container.command("login", account, options=(
        "--volume", f"{secret}:/run/secrets/sync_password:ro",
        "--env", "ANKISYNC_SETUP_PASSWORD_FILE=/run/secrets/sync_password"))
    container.api_key = container.command("api-key").stdout.strip()
    assert container.api_key.startswith("ak_")

    started = time.monotonic()
    container.start()
    wait_until(lambda: healthz(container) == 200, lambda: "the API:\n" + container.logs(), 120,
               every=0.1)
    status, _, body = container.call("POST", "/api/v1/clozeNotes", helpers.card(0))
    assert status == 202, body
    job = container.wait(body["taskId"])
    assert job["status"] == "success" and job["result"]["synced"], job
    TIMINGS["first synced card"] = time.monotonic() - started
    print(f"\nfrom docker run to the first synced card: {TIMINGS['first synced card']:.1f} s")
    assert on_server(tmp_path, sync_server, account) == {"word0": 1}
    container.wait_health("healthy")
    # `docker compose exec ankisync ./run.sh status` (as root, as exec runs) sees the worker
    status = docker("exec", container.name, "./run.sh", "status", check=False)
    assert status.returncode == 0 and "worker     running" in status.stdout, status
    # it runs as the data folder's owner, and so do its files
    users = docker("top", container.name, "-eo", "pid,uid,args").stdout.splitlines()[1:]
    assert {line.split()[1] for line in users if "ankisync.py" in line} == {str(OWNER)}, users
    assert {path.stat().st_uid for path in container.data_dir.rglob("*")} == {OWNER}
    assert "ankisync: installing" not in container.logs()  # the image's venv is complete

    # A burst, and the container killed (SIGKILL, no clean-up) while the worker is at it
    accepted = []
    for n in range(1, BURST + 1):
        status, _, body = container.call("POST", "/api/v1/clozeNotes", helpers.card(n))
        assert status == 202, body
        accepted.append(body["taskId"])
    unfinished = [task for task in accepted if
                  container.call("GET", f"/api/v1/tasks/{task}")[2]["status"] != "success"]
    docker("kill", container.name)
    assert unfinished, "the worker finished the burst before the kill: nothing was tested"
    docker("start", container.name)
    wait_until(lambda: healthz(container) == 200, lambda: "the API:\n" + container.logs(), 120,
               every=0.1)
    for task in accepted:
        job = container.wait(task)
        assert job["status"] == "success", job
    counts = on_server(tmp_path, sync_server, account)
    assert counts == {f"word{n}": 1 for n in range(BURST + 1)}  # nothing lost, nothing doubled

    # The worker killed inside, run.sh held so that it cannot stop the container yet:
    # the health check turns unhealthy. Let go, run.sh stops the API too, and the
    # restart policy brings both back.
    container.wait_health("healthy")
    restarts = restart_count(container)
    container.exec("for status in /proc/[0-9]*/status; do grep -q '^PPid:[[:space:]]*1$' $status"
                   " && grep -q '^Name:[[:space:]]*bash$' $status && kill -STOP"
                   " $(basename $(dirname $status)); done; kill -KILL $(cat /data/worker.pid)")
    container.wait_health("unhealthy", timeout=60)
    container.exec("kill -CONT -1")
    wait_until(lambda: restart_count(container) > restarts,
               lambda: "a restart:\n" + container.logs(), 60, every=0.2)
    container.wait_health("healthy")


def restart_count(container):
    return json.loads(docker("inspect", container.name).stdout)[0]["RestartCount"]


def healthz(container):
    try:
        return request("GET", container.url + "/healthz")[0]
    except OSError:
        return None


def test_docker_stop_lets_the_running_job_finish(make_container, fake_tts):
    container = make_container(ANKISYNC_GOOGLE_API_KEY=GOOGLE_KEY,
                               ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url)
    container.api_key = container.command("api-key").stdout.strip()
    container.start()
    wait_until(lambda: healthz(container) == 200, lambda: "the API:\n" + container.logs(), 120,
               every=0.1)
    fake_tts.hold()
    status, _, body = container.call("POST", "/api/v1/clozeNotes", helpers.card(1))
    assert status == 202, body
    fake_tts.wait_held()  # the job is running, inside the text-to-speech call
    stopping = threading.Thread(target=docker, args=("stop", container.name), daemon=True)
    stopping.start()  # SIGTERM, then SIGKILL after 10 s
    wait_until(lambda: not container.state()["Running"] or healthz(container) is None,
               "the API to stop on SIGTERM", 30, every=0.05)
    fake_tts.release()  # the worker, still running, finishes the job
    stopping.join(60)
    state = container.state()
    assert not state["Running"] and state["ExitCode"] == 0, (state, container.logs())
    assert "job %s: " % body["taskId"] in container.logs()
    docker("start", container.name)
    wait_until(lambda: healthz(container) == 200, lambda: "the API:\n" + container.logs(), 120,
               every=0.1)
    job = container.wait(body["taskId"])
    assert job["status"] == "success" and job["attempts"] == 1, job  # done before it stopped
