"""How many text-to-speech requests go out at once, per provider, and what a 429 does.

Each provider starts at its ceiling: ANKISYNC_TTS_IN_FLIGHT, else what its documented
quota allows (CEILINGS). A 429 (Google's RESOURCE_EXHAUSTED, OpenAI's and Azure's Too
Many Requests) is not the clip's failure: the provider's limit is halved, the clip
waits (the server's Retry-After, else a short growing pause) and is asked again, and
after successes the limit grows back by one per limit's worth of answers (additive
increase, multiplicative decrease, as TCP does with its window). Only when a clip's
waits would pass its patience (a slice of the job's time) does its 429 stand: the job
is retried by the queue, as for any unavailable provider.
"""

import email.utils
import functools
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import errors

log = logging.getLogger(__name__)

# Clips in flight at most, by default, per provider.
# - google: 1,000 requests a minute per project by default
#   (https://cloud.google.com/text-to-speech/quotas). The quota counts a minute, not a
#   moment: a 200-card burst (400 clips) fits in one minute's quota, so spreading it
#   gains nothing. 64 at once speak a 20-card burst's 40 clips in one round trip and
#   the 400 in about 7; more would only cost a Pi threads and sockets. Past the quota,
#   Google's 429s bring the limit down.
# - openai: OpenAI's per-minute request limits run from 3 (free tier, tts-1) to a few
#   hundred; the servers that copy its API on a home machine (Kokoro-FastAPI, LocalAI)
#   speak one clip at a time per CPU or GPU, so more in flight only queues there.
# - azure: a Speech resource synthesizes 20 requests per 60 s on the free tier (F0)
#   and 200 per second on Standard (S0) by default; 8 (what every provider had
#   before) keeps F0 from a burst of 429s and is far below S0's rate.
# - espeak: one espeak-ng process per core; more only share the cores.
CEILINGS = {"google": 64, "openai": 4, "azure": 8}
MOST_IN_FLIGHT = 256  # what ANKISYNC_TTS_IN_FLIGHT may give (config.py)
RECORDINGS = 8  # downloads of cards' own word recordings (word_audio), in the same pool
FIRST_PAUSE = 0.25  # seconds before asking again after a 429 without Retry-After
LONGEST_PAUSE = 4.0  # the growing pause stops growing here


class RateLimited(errors.TTSUnavailable):
    """The provider answered 429: too many requests for now (retry_after: its wish, in s)."""
    kind = "TTSUnavailable"  # if it stands, the job's error is what it always was

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


def ceiling(provider, settings):
    """The most requests of provider in flight at once: the setting, else its default."""
    if settings.tts_in_flight:
        return settings.tts_in_flight
    if provider == "espeak":
        return cores()
    return CEILINGS.get(provider, 1)


def cores():
    """The cores this process may run on (`taskset` counts: a Pi-sized run on one core)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def patience(settings):
    """Seconds a clip may spend in all waiting for a provider that answers 429: a quarter
    of the job's time (5 to 30 s, as each network call's), leaving the rest for the
    note and the sync."""
    return max(5, min(30, settings.task_timeout / 4))


def retry_after(value):
    """Seconds a Retry-After header (or Google's retryDelay, "1.5s") asks for, or None when
    absent or not understood."""
    if not value or not isinstance(value, str):
        return None
    value = value.strip().removesuffix("s")
    try:
        seconds = float(value)
    except ValueError:
        try:  # an HTTP date
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


def pause(asked, attempt):
    """Seconds to wait before asking again: the server's wish, else a growing pause
    with jitter (so that the clips it refused together do not come back together)."""
    if asked is not None:
        return asked
    return min(LONGEST_PAUSE, FIRST_PAUSE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Limit:
    """One provider's requests in flight: at most `allowed`, halved on a 429, grown back
    by one after `allowed` successes, never above `ceiling`."""

    def __init__(self, provider, ceiling):
        self.provider = provider
        self.ceiling = self.allowed = ceiling
        self.in_flight = 0
        # Bumped by each cut: the 429s of requests sent before a cut were answered to
        # the traffic that cut already answers, and cut nothing more.
        self.cuts = 0
        self._successes = 0
        self._changed = threading.Condition()

    def enter(self):
        """Wait for room; the cut count when the request goes out (give it to leave())."""
        with self._changed:
            while self.in_flight >= self.allowed:
                self._changed.wait()
            self.in_flight += 1
            return self.cuts

    def leave(self, sent_at, outcome):
        """The request is answered: "ok", "rate-limited" or "failed" (anything else)."""
        with self._changed:
            if outcome == "rate-limited" and sent_at == self.cuts:
                was = self.allowed
                # half of what was really in flight: the limit may not have been reached
                self.allowed = max(1, min(self.allowed, self.in_flight) // 2)
                self.cuts += 1
                self._successes = 0
                log.warning("%s text-to-speech is rate-limiting (429): %s requests in flight at"
                            " most now (was %s)", self.provider, self.allowed, was)
            elif outcome == "ok" and self.allowed < self.ceiling:
                self._successes += 1
                if self._successes >= self.allowed:
                    self.allowed += 1
                    self._successes = 0
                    if self.allowed == self.ceiling:
                        log.info("%s text-to-speech: back to %s requests in flight",
                                 self.provider, self.allowed)
            self.in_flight -= 1
            self._changed.notify_all()


class Speakers:
    """The worker's text-to-speech threads, and each provider's Limit on them.

    Used as the Worker's executor: submit() for other work (word recordings),
    speak() for a provider's clip, shutdown() at the worker's end. The pool grows
    to the largest ceiling asked for (a provider set up while the worker runs).
    """

    def __init__(self, settings):
        self.settings = settings
        self.patience = patience(settings)
        self._limits = {}
        self._pool, self._size = None, 0
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def limit(self, provider):
        with self._lock:
            if provider not in self._limits:
                self._limits[provider] = Limit(provider, ceiling(provider, self.settings))
            return self._limits[provider]

    def _submit(self, size, fn, *args, **kwargs):
        """fn(...) in a pool of at least size threads (threads start only when needed)."""
        with self._lock:  # no submit to a pool being replaced
            if size > self._size:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)  # its queued work still runs
                self._pool = ThreadPoolExecutor(size, thread_name_prefix="tts")
                self._size = size
            return self._pool.submit(fn, *args, **kwargs)

    def submit(self, fn, /, *args, **kwargs):
        """Run fn in a thread of the pool, unlimited by any provider."""
        return self._submit(RECORDINGS, fn, *args, **kwargs)

    def speak(self, provider, fn, /, *args, **kwargs):
        """Run fn (a call to provider) within provider's limit; a 429 slows down, see above."""
        limit = self.limit(provider)
        call = functools.partial(fn, *args, **kwargs)
        return self._submit(max(RECORDINGS, limit.ceiling), self._limited, limit, call)

    def _limited(self, limit, call):
        waited, attempt = 0.0, 0
        while True:
            sent_at = limit.enter()
            try:
                result = call()
            except RateLimited as error:
                limit.leave(sent_at, "rate-limited")
                attempt += 1
                wait = pause(error.retry_after, attempt)
                if waited + wait > self.patience or self._closing.is_set():
                    log.info("%s text-to-speech still rate-limiting after %.1fs of waits;"
                             " the job will be retried", limit.provider, waited)
                    raise
                waited += wait
                log.debug("%s text-to-speech 429: asking again in %.2fs", limit.provider, wait)
                if self._closing.wait(wait):  # the worker stops: no more waiting
                    raise
                continue
            except BaseException:
                limit.leave(sent_at, "failed")
                raise
            limit.leave(sent_at, "ok")
            return result

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._closing.set()
        with self._lock:
            pool, self._pool, self._size = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
