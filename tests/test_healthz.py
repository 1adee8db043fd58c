"""GET /healthz, the URL Docker, uptime monitors and proxies poll: no token, 200 only
while the API and the worker both run, 503 otherwise, and nothing else told."""

import os
import signal
import subprocess

import pytest

import helpers
from service import ROOT, request, wait_until


def test_healthz_is_ok_without_a_token_and_tells_nothing_else(service):
    status, headers, body = request("GET", service.url + "/healthz")
    assert status == 200 and body == {"status": "ok"}
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"  # a proxy never answers for a dead worker
    assert request("GET", service.url + "/")[2] == {"status": "ok"}  # the old clients' URL
    status, _, raw = helpers.send(service.port, "HEAD", "/healthz")
    assert status == 200 and raw == b""


def test_healthz_answers_whatever_host_a_monitor_uses_and_only_healthz_does(service):
    status, _, raw = helpers.send(service.port, "GET", "/healthz",
                                  headers={"Host": "status.example"})
    assert status == 200 and raw == b'{"status": "ok"}'
    # the DNS-rebinding guard still holds for everything else, / included
    for path in ("/", "/api/v1/openapi.json", "/healthz/"):
        status = helpers.send(service.port, "GET", path, headers={"Host": "status.example"})[0]
        assert status == 403, path


@pytest.fixture
def roles(make_service):
    """The API and the worker as two processes (`./run.sh serve`, `./run.sh worker`), as a
    user may run them, so that one can die while the other keeps answering."""
    service = make_service(start=False)
    service.data_dir.mkdir(parents=True)
    log = open(service.log_path, "ab")
    started = {}

    def start(role):
        started[role] = subprocess.Popen([str(ROOT / "run.sh"), role], cwd=ROOT, env=service.env,
                                         stdout=log, stderr=log, start_new_session=True)

    def alive():
        for role, process in started.items():
            assert process.poll() is None, f"{role} exited:\n{service.logs()}"
        try:
            return request("GET", service.url + "/")[0] == 200 and service.worker_alive()
        except OSError:
            return False

    start("serve")
    start("worker")
    wait_until(alive, lambda: "the API and the worker:\n" + service.logs(), 60, every=0.1)
    service.start_role = start
    service.roles = started
    yield service
    for process in started.values():
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    log.close()


def healthz(service):
    return request("GET", service.url + "/healthz")


def test_healthz_is_503_once_the_worker_is_killed_and_200_when_it_is_back(roles):
    status, _, body = healthz(roles)
    assert status == 200 and body == {"status": "ok"}
    worker = int((roles.data_dir / "worker.pid").read_text())
    os.kill(worker, signal.SIGKILL)  # no clean-up: its pid file stays, naming a dead pid
    os.killpg(roles.roles["worker"].pid, signal.SIGKILL)  # and its Huey children with it
    roles.roles["worker"].wait()
    assert (roles.data_dir / "worker.pid").exists()
    status, _, body = wait_until(lambda: (answer := healthz(roles))[0] != 200 and answer,
                                 "/healthz to notice the dead worker", 10)
    assert status == 503
    # what is wrong, and nothing more: no pid, queue, version or path
    assert body == {"status": "unavailable", "message": "the worker is not running"}
    assert request("GET", roles.url + "/")[0] == 200  # the API itself still answers

    roles.start_role("worker")
    wait_until(lambda: healthz(roles)[0] == 200, lambda: "/healthz back to 200:\n" + roles.logs(),
               60, every=0.1)
