"""Throttles, in the web process's memory: failed logins per client address,
and cards per login.

After LIMIT failed logins (or refreshes) within WINDOW seconds an address is
locked out: a wrong key or a bad refresh token from it gets 429 with
Retry-After for FIRST_LOCKOUT seconds, doubling with each lock-out in a row up
to MAX_LOCKOUT. The right key and a valid refresh token always pass: the
credential is checked first (in constant time), so the lock-out stops only
guesses, and a page or a neighbour sharing the user's address cannot lock the
user out by failing on purpose. Guessing a
256-bit API key is hopeless anyway; this keeps a guesser from burning CPU and
log space, while the real user who mistyped a key waits seconds, not hours. A
success clears the address; an address that stays quiet for WINDOW after its
lock-out ended starts afresh. At most MAX_ADDRESSES are remembered, the least
recently seen forgotten first, so a flood of addresses cannot grow the table.

The numbers are module constants, not settings: they suit every install, and
the tests observe a release within FIRST_LOCKOUT seconds. The address is the
TCP peer (REMOTE_ADDR), never X-Forwarded-For, which any client can write.
Behind a reverse proxy every client shares the proxy's address; waitress's own
`trusted_proxy` option is the right fix (it rewrites REMOTE_ADDR), not reading
the header here.
"""

import collections
import functools
import ipaddress
import logging
import math
import threading
import time

import bottle

log = logging.getLogger(__name__)

LIMIT = 5  # failures within WINDOW that lock an address out
WINDOW = 60.0  # seconds
FIRST_LOCKOUT = 2.0  # seconds; doubles with each lock-out in a row
MAX_LOCKOUT = 300.0
MAX_ADDRESSES = 4096
REFUSED = (401, 403)  # answers that count as a failed attempt


class _Entry:
    __slots__ = ("failures", "strikes", "last", "until")

    def __init__(self):
        self.failures, self.strikes, self.last, self.until = [], 0, 0.0, 0.0


class Throttle:
    """Failures per address; waitress serves from several threads, hence the lock."""

    def __init__(self, limit=LIMIT, window=WINDOW, first=FIRST_LOCKOUT, longest=MAX_LOCKOUT,
                 size=MAX_ADDRESSES, clock=time.monotonic):
        self.limit, self.window, self.first, self.longest = limit, window, first, longest
        self.size, self.clock = size, clock
        self._lock = threading.Lock()
        self._table = collections.OrderedDict()  # address -> _Entry, least recent first

    def __len__(self):
        return len(self._table)

    def wait(self, address):
        """Whole seconds the address must wait before its next try; 0 when it may try."""
        with self._lock:
            entry = self._table.get(address)
            left = entry.until - self.clock() if entry else 0
        return math.ceil(left) if left > 0 else 0

    def failed(self, address):
        """Count a failure; the lock-out in seconds it caused, else 0."""
        now = self.clock()
        with self._lock:
            entry = self._table.pop(address, None)
            if entry is None or now - max(entry.last, entry.until) > self.window:
                entry = _Entry()
            entry.failures = [t for t in entry.failures if now - t <= self.window] + [now]
            entry.last = now
            lockout = 0
            if len(entry.failures) >= self.limit:
                lockout = min(self.first * 2 ** entry.strikes, self.longest)
                entry.until, entry.failures = now + lockout, []
                entry.strikes += 1
            self._table[address] = entry
            while len(self._table) > self.size:
                self._table.popitem(last=False)
        return lockout

    def succeeded(self, address):
        with self._lock:
            self._table.pop(address, None)


def client(environ):
    """The throttled unit: the peer's IPv4 address, or its IPv6 /64 (one host's share)."""
    address = environ.get("REMOTE_ADDR") or "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 4:
        return address
    if parsed.ipv4_mapped:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False))


LOGINS = Throttle()


def guard(callback):
    """Route decorator: a refused credential counts against the address, and gets 429
    while the address is locked out; a good one passes and clears the address."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        address = client(bottle.request.environ)
        try:
            answer = callback(*args, **kwargs)
        except Exception as error:
            if getattr(error, "status", None) not in REFUSED:
                raise
            wait = LOGINS.wait(address)
            if not wait:
                lockout = LOGINS.failed(address)
                if lockout:
                    log.warning("%s locked out for %g s after %d failed logins",
                                address, lockout, LOGINS.limit)
                raise
            bottle.response.status = 429
            bottle.response.set_header("Retry-After", str(wait))
            return {"message": f"too many failed logins from {address}: wait {wait} s, then"
                               " log in with the right API key (a lost key is replaced with"
                               " `./run.sh api-key`)", "retryAfter": wait}
        LOGINS.succeeded(address)
        return answer
    return wrapper


class Bucket:
    """Token buckets by key (a login): `size` at once, refilled at `rate` per second.

    A person clicking words never notices; a script with a stolen token cannot
    post thousands of cards (each one paid TTS calls) in seconds.
    """

    def __init__(self, size, rate, keys=MAX_ADDRESSES, clock=time.monotonic):
        self.size, self.rate, self.keys, self.clock = size, rate, keys, clock
        self._lock = threading.Lock()
        self._table = collections.OrderedDict()  # key -> (tokens, when), least recent first

    def take(self, key):
        """Take one; 0 when taken, else the whole seconds until one is there."""
        now = self.clock()
        with self._lock:
            tokens, when = self._table.pop(key, (self.size, now))
            tokens = min(self.size, tokens + (now - when) * self.rate)
            wait = 0 if tokens >= 1 else math.ceil((1 - tokens) / self.rate)
            self._table[key] = (tokens - 1 if not wait else tokens, now)
            while len(self._table) > self.keys:  # forgotten keys start full: no harm
                self._table.popitem(last=False)
        return wait
