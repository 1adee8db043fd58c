"""One ankisync per data dir: a second start is refused at once and touches nothing."""

import re
import threading

from anki_server import free_port
from helpers import card, run_sh_stops
from test_faults import assert_exactly_once



def run(service, *args, port=None):
    """`./run.sh ARGS` on service's data dir, on another port; (exit status, stderr)."""
    env = dict(service.env, ANKISYNC_LISTEN=f"127.0.0.1:{port or free_port()}")
    return run_sh_stops(env, *args)


def assert_names_the_first(service, stderr):
    assert "already running on the data dir" in stderr, stderr
    assert f"127.0.0.1:{service.port}" in stderr, stderr  # the running one's address
    pid = int(re.search(r"pid (\d+)", stderr).group(1))
    assert pid in service.group_alive(), stderr  # the running one's pid
    assert "Traceback" not in stderr, stderr


def test_second_run_sh_on_the_same_data_dir_is_refused(make_service, sync_server, account,
                                                       tmp_path):
    first = make_service()
    first.sync_login(account)
    worker_pid = (first.data_dir / "worker.pid").read_text()
    accepted = []

    def post():  # cards arrive while the second one starts: none may be taken by it
        for n in range(12):
            status, body = first.post_card(card(n))
            assert status == 202, body
            accepted.append(body["taskId"])

    poster = threading.Thread(target=post)
    poster.start()
    code, stderr = run(first)
    poster.join()
    assert code == 1, stderr
    assert_names_the_first(first, stderr)

    assert (first.data_dir / "worker.pid").read_text() == worker_pid
    status, _, health = first.call("GET", "/api/v1/health")
    assert status == 200 and health["status"] == "ok", health
    assert health["worker"]["pid"] == int(worker_pid)
    for task_id in accepted:
        job, _ = first.wait(task_id)
        assert job["status"] == "success" and job["result"]["synced"], job
    assert_exactly_once(tmp_path, sync_server, account, accepted)
    assert first.cli("status").returncode == 0  # the first one is still seen alive


def test_worker_or_api_started_by_hand_is_refused_and_commands_still_work(make_service):
    service = make_service()
    worker_pid = (service.data_dir / "worker.pid").read_text()
    code, stderr = run(service, "worker")
    assert code == 1, stderr
    assert_names_the_first(service, stderr)
    code, stderr = run(service, "serve")
    assert code == 1, stderr
    assert_names_the_first(service, stderr)
    assert (service.data_dir / "worker.pid").read_text() == worker_pid

    # the commands a person types work while the service runs
    assert service.cli("status").returncode == 0
    key = service.cli("api-key")
    assert key.returncode == 0 and key.stdout.startswith("ak_"), key.stderr
    service.api_key, service.token = key.stdout.strip(), None
    status, body = service.post_card()
    assert status == 202, body
    assert service.wait(body["taskId"])[0]["status"] == "success"


def test_a_stopped_instance_leaves_no_lock_behind(make_service):
    service = make_service()
    assert service.stop() == 0
    service.start()  # the same data dir again, at once
    status, body = service.post_card()
    assert status == 202 and service.wait(body["taskId"])[0]["status"] == "success"
