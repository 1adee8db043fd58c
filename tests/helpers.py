"""What many tests share: one card maker, one way to wait, one raw HTTP client.

The ordinary client is `service.request` (and `Service.call`), and the one poller
`service.wait_until` (re-exported here); `send` here is for the tests that must
choose the loopback address a request comes from.
"""

import http.client
import json
import os
import signal
import subprocess

from service import CARD, ROOT, wait_until  # noqa: F401 (re-exported: the one poller)


def card(n, word=None):
    """The n-th distinct card (its own word and sentence, so its own note)."""
    word = word or f"word{n}"
    return dict(CARD, word=word, englishExample=f"Sentence {n} with {{{{c1::{word}}}}}.")


def wait_for_log(service, text, timeout=30):
    """Wait until the service's log holds text."""
    wait_until(lambda: text in service.logs(), lambda: f"{text!r} in:\n{service.logs()}",
               timeout)


def send(port, method, path, body=None, headers=None, source="127.0.0.1", timeout=60):
    """(status, headers, raw body) of one request to 127.0.0.1:port from the loopback
    address `source`; a dict or list body goes as JSON."""
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        conn.close()


def request_waiting_at(port):
    """Whether bytes wait unread in a connection accepted on 127.0.0.1:port: a request
    sent to a server that is paused (SIGSTOP) and so cannot read it."""
    local = "0100007F:%04X" % port
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            rx_queue = int(fields[4].split(":")[1], 16)
            if fields[1] == local and fields[3] == "01" and rx_queue > 0:
                return True
    return False


def run_sh_stops(env, *args, within=60):
    """`./run.sh ARGS` that must stop by itself (a refusal): (exit status, stderr).

    `within` bounds the wait, so a start that runs on regardless fails the test.
    """
    process = subprocess.Popen([str(ROOT / "run.sh"), *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=within)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"`./run.sh {' '.join(args)}` did not stop: it runs") from error
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.returncode, stderr
