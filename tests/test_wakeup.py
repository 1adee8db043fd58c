"""The worker waits for a nudge from whoever queues a task (wakeup.py), and does
without one: a nudge lost, a socket that cannot be made, junk from another process."""

import os
import socket
import stat

from helpers import card, wait_for_log, wait_until


def succeeds(service, n):
    status, body = service.post_card(card(n))
    assert status == 202, body
    job, _ = service.wait(body["taskId"])
    assert job["status"] == "success", job


def test_the_worker_listens_to_its_owner_only_and_works_without_nudges(service):
    path = service.data_dir / "worker.wake"
    wait_until(path.exists, "the worker's socket")  # made by the worker process at its start
    mode = path.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    succeeds(service, 1)

    # Datagrams from anyone who may write to the socket only wake the worker.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for _ in range(500):
            try:
                sender.sendto(os.urandom(2048), str(path))
            except BlockingIOError:  # its queue is full: nudges are dropped, not stored
                break
    succeeds(service, 2)

    # Nudges lost (the socket gone): the worker still finds the card by itself.
    path.unlink()
    succeeds(service, 3)

    assert service.stop() == 0
    assert not path.exists()


def test_a_data_dir_too_deep_for_a_socket_polls_the_queue(make_service):
    # a Unix socket's path holds at most 107 bytes
    service = make_service(name="d" * 110)
    wait_for_log(service, "the worker polls the queue instead of waiting for a nudge")
    assert not (service.data_dir / "worker.wake").exists()
    succeeds(service, 1)
