"""The first ?async=false card after a restart against warm ones, and start to ready.

    python bench/first_card.py --runs 5

Each run: a fresh service logs into a fresh sync account and one warm-up card
goes up (the first full upload). The service is stopped (SIGTERM) and started
again on the same data dir, as after a reboot. Timed: `./run.sh` start until
GET /api/v1/health says the worker is `ready` (warmed up: the voice's client
built, the collection open, the first sync done); then one POST ?async=false
card (`first-card`), then --async-cards more (`warm-card`, their median).
Prints the ratio first / warm. The rig is burst.py's: TTS --tts-delay (0.2 s)
per clip, the sync server --rtt (0.1 s) away.
"""

import time

import burst
import common


def wait_ready(service, timeout=120):
    """Seconds until health says the worker is alive and warmed up."""
    client = common.Client(service)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            status, body = client.call("GET", "/api/v1/health")
            worker = body["worker"] if status == 200 else {}
            # before health had `ready` (to measure older commits): alive is all it says
            if worker.get("ready", worker.get("alive")):
                return
            time.sleep(0.01)
    finally:
        client.close()
    raise RuntimeError(f"the worker was not ready after {timeout} s: {service.logs()}")


def run_once(rig, args):
    service = rig.service()
    try:
        burst.warm_up(service)
        service.stop()
        began = time.monotonic()
        service.start(timeout=120)
        wait_ready(service)
        ready = time.monotonic() - began
        first = burst.async_false(service, 1)["seconds"]
        warm = burst.async_false(service, args.async_cards)["seconds"]  # their median
    finally:
        rig.stop(service)
    return {"start-to-ready": {"seconds": ready},
            "first-card": {"seconds": first, "warm": warm, "ratio": first / warm}}


LINES = {
    "start-to-ready": lambda r: f"{r['seconds']:.2f} s from ./run.sh to health's worker.ready",
    "first-card": lambda r: (f"first ?async=false card after the restart {r['seconds']:.2f} s,"
                             f" warm {r['warm']:.2f} s: {r['ratio']:.2f}x"),
}


def add_arguments(parser):
    parser.add_argument("--async-cards", type=int, default=3,
                        help="warm ?async=false cards timed per run (default %(default)s)")


if __name__ == "__main__":
    common.main(__doc__, add_arguments, run_once, LINES.__getitem__)
