"""Checked downloads over http(s): a file a client names by URL, fetched for it.

A URL fetched on someone's word is a door into this machine's network, so each
host is resolved once and its addresses checked (not this machine, the LAN or a
cloud's metadata service, unless the caller allows it), then that address is
connected to (no second lookup, so a DNS answer cannot change in between); each
redirect is checked the same way, and the whole download has one deadline and a
size cap. Used by AnkiConnect's media `url` (ankiconnect/fetch.py) and a card's
`wordAudioUrl` (word_audio.py).
"""

import http.client
import ipaddress
import socket
import threading
import time
import urllib.parse

MAX_REDIRECTS = 5
READ_TIMEOUT = 10  # seconds per network read, as the AnkiConnect add-on's webTimeout
# Cloud metadata services: a fetch there hands out the machine's cloud credentials.
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))


class DownloadError(Exception):
    """A download that did not happen; str(error) says why.

    kind: "refused" (the URL or its address is not allowed), "status" (an HTTP
    error; status holds it), "timeout", "too_big", "unreachable" or "redirects".
    """

    def __init__(self, message, kind, status=None):
        super().__init__(message)
        self.kind, self.status = kind, status


def public(ip):
    """Whether an address is on the public internet (not this machine, the LAN, a cloud's
    metadata)."""
    if ip.version == 6:
        # an IPv4 address carried inside IPv6 is judged as itself
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo or (None, None))[1]
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not public(embedded):
            return False
    return ip.is_global and not ip.is_multicast and ip not in METADATA


def _target(url, parts, exempt, setting):
    """The one address a URL's host resolves to, checked; connecting to it (not to
    the name again) leaves no room for a DNS answer that changes in between."""
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise DownloadError(f"{url} download failed: cannot find the host {host}",
                            "unreachable") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    for ip in addresses:
        if not public(ip) and not exempt(host, ip):
            raise DownloadError(f"url is not allowed: {url}: it is on this machine or a private"
                                f" network; to fetch from it, add {host} to {setting}",
                                "refused")
    return str(addresses[0]), port


def _cut(guard, live):
    """Hang up a download that ran out of time, waking the thread that reads it.

    By file descriptor: TLS wraps the socket object in a new one on the same
    descriptor, and the response keeps reading after the connection object
    let go of it. `live` is emptied (under `guard`) before the socket closes.
    """
    with guard:
        for fd in live:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # closed already
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.detach()


def _get(url, deadline, how):
    """One GET: ("redirect", next URL) or ("body", bytes)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise DownloadError(f"{url} is not an http:// or https:// URL", "refused") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"{url} is not an http:// or https:// URL", "refused")
    if how["check"] is not None:
        how["check"](url)
    address, port = _target(url, parts, how["exempt"], how["setting"])
    left = deadline - time.monotonic()
    late = DownloadError(f"{url} download failed: it took longer than {how['timeout']:g} s",
                         "timeout")
    if left <= 0:  # the name took the time left (a slow resolver on a redirect's host)
        raise late
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, port, timeout=max(0.1, min(READ_TIMEOUT, left)))
    guard, live = threading.Lock(), []

    def connect(_, timeout, source=None):
        # the checked address, never a second lookup (Host header and TLS keep the name)
        sock = socket.create_connection((address, port), timeout, source)
        with guard:
            live.append(sock.fileno())
        return sock

    connection._create_connection = connect
    # the total deadline: a server dripping a byte at a time is cut off all the same
    timer = threading.Timer(max(0.0, left), _cut, [guard, live])
    timer.daemon = True
    timer.start()
    answer, most = None, how["max_bytes"]
    too_big = DownloadError(f"{url} download failed: larger than {most // 2**20} MB", "too_big")
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers={"User-Agent": how["user_agent"]})
        answer = connection.getresponse()
        location = answer.getheader("Location")
        if answer.status in (301, 302, 303, 307, 308) and location:
            return "redirect", urllib.parse.urljoin(url, location)
        if answer.status != 200:
            raise DownloadError(f"{url} download failed with return code {answer.status}",
                                "status", answer.status)
        declared = answer.getheader("Content-Length") or ""
        if declared.isdigit() and int(declared) > most:
            raise too_big
        data = bytearray()
        while len(data) <= most:
            if time.monotonic() >= deadline:  # a drip that beats each read's timeout
                raise late
            chunk = answer.read1(64 * 1024)
            if not chunk:
                break
            data += chunk
        if len(data) > most:
            raise too_big
        if time.monotonic() >= deadline:  # cut off: what came is not the whole file
            raise late
        return "body", bytes(data)
    except (OSError, ValueError, http.client.HTTPException) as error:
        # ValueError: a name or path http.client cannot send (InvalidURL, bad IDNA)
        if time.monotonic() >= deadline:
            raise late from None
        raise DownloadError(f"{url} download failed: {type(error).__name__}",
                            "unreachable") from None
    finally:
        with guard:
            live.clear()
        timer.cancel()
        if answer is not None:
            answer.close()
        connection.close()


def fetch(url, *, timeout, max_bytes, exempt, setting, user_agent="ankisync", check=None):
    """The body of a GET of url: http(s) only, redirects followed and checked the same way,
    within timeout seconds in all and max_bytes; raises DownloadError.

    exempt(host, ip): whether a non-public address may be fetched from for this host
    (the user allowed it in `setting`, named by the refusal). check(url), for the URL and
    each redirect: raises DownloadError (kind "refused") for one the caller does not allow.
    """
    if not isinstance(url, str):
        raise DownloadError(f"{url} is not an http:// or https:// URL", "refused")
    how = {"timeout": timeout, "max_bytes": max_bytes, "exempt": exempt, "setting": setting,
           "user_agent": user_agent, "check": check}
    deadline = time.monotonic() + timeout
    asked = url
    for _ in range(MAX_REDIRECTS + 1):
        kind, value = _get(url, deadline, how)
        if kind == "body":
            return value
        url = value
    raise DownloadError(f"{asked} download failed: more than {MAX_REDIRECTS} redirects",
                        "redirects")
