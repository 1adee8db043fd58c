"""Huey's consumer as the worker runs it: its scheduler in the main process.

Huey's consumer with a process worker forks two children: the worker, and a
scheduler that once a second moves the tasks whose time has come (retries,
guards, the periodic sync) from the schedule to the queue. That scheduler is
a copy of the consumer process (~24 MB of RSS) for one query a second. Here
the consumer's main loop does it, between the checks it wakes for every
0.1 s anyway. No thread: the main process forks a new worker when one dies,
and a fork must not catch another thread inside SQLite.
"""

import logging
import time

from huey import consumer

log = logging.getLogger(__name__)


class InMainLoop:
    """Stands for the scheduler's process, to Huey's consumer: the main loop does its work."""

    def __init__(self):
        self.stopped = False

    def start(self):
        pass

    def join(self, timeout=None):
        self.stopped = True  # the main loop has stopped: joining is how the consumer stops

    def is_alive(self):
        return not self.stopped


class Consumer(consumer.Consumer):
    """Huey's consumer, but its main process does the scheduler's work (no periodic tasks)."""

    next_schedule = 0.0  # monotonic time of the next look at the schedule

    def __init__(self, huey, **options):
        if options.get("periodic"):
            raise ValueError("this consumer runs no periodic tasks (ankisync schedules its own)")
        super().__init__(huey, periodic=False, **options)

    def _create_process(self, process, name):
        if isinstance(process, consumer.Scheduler):
            return InMainLoop()
        # A forked worker must not share this process's connection to the queue
        # (it reads the schedule): it opens its own.
        self.huey.storage.close()
        return super()._create_process(process, name)

    def loop(self, health_check_ts=None):
        health_check_ts = super().loop(health_check_ts)  # raises ConsumerStopped at a stop
        now = time.monotonic()
        if now >= self.next_schedule:
            self.next_schedule = now + self.scheduler_interval
            self.enqueue_due()
        return health_check_ts

    def enqueue_due(self):
        """Move the scheduled tasks whose time has come to the queue (as Huey's scheduler)."""
        try:
            due = self.huey.read_schedule()
        except Exception:
            log.exception("could not read the schedule")
            return
        for task in due:
            log.debug("enqueueing %s", task)
            try:
                self.huey.enqueue(task)
            except Exception:
                log.exception("could not enqueue %s", task)
