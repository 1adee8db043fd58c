"""Where a media file's bytes come from: base64 data, a local path, or a URL.

The service runs all the time, unlike the add-on, so this door is narrow:
`path`s only from folders the user named (never our data dir or the kernel's
files), `url`s only from public addresses (or ones the user allowed), bounded
in time and size, redirects checked the same way.
"""

import base64
import binascii
import http.client
import ipaddress
import os
import socket
import stat
import threading
import time
import urllib.parse

from ankiconnect.dispatch import ActionError

MAX_DOWNLOAD = 32 * 1024 * 1024   # media fetched by url or read from a path
DOWNLOAD_TIMEOUT = 10             # seconds per network read, as the add-on's webTimeout
MAX_REDIRECTS = 5
# Never a media source, whatever the folders allowed: our secrets and the kernel's.
NEVER_READ = ("/proc", "/sys", "/dev")
# Cloud metadata services: a fetch there hands out the machine's cloud credentials.
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))


def _refuse_url(url, why):
    return ActionError(f"url is not allowed: {url}: {why}")


def _public(ip):
    """Whether an address is on the public internet (not this machine, the LAN, a cloud's
    metadata)."""
    if ip.version == 6:
        # an IPv4 address carried inside IPv6 is judged as itself
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo or (None, None))[1]
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _public(embedded):
            return False
    return ip.is_global and not ip.is_multicast and ip not in METADATA


def _target(settings, url, parts):
    """The one address a URL's host resolves to, checked; connecting to it (not to
    the name again) leaves no room for a DNS answer that changes in between."""
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = settings.ankiconnect_url_allow
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ActionError(f"{url} download failed: cannot find the host {host}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    for ip in addresses:
        if host.lower().rstrip(".") in allowed or any(
                ip.version == entry.version and ip in entry
                for entry in allowed if not isinstance(entry, str)):
            continue
        if not _public(ip):
            raise _refuse_url(url, "it is on this machine or a private network; to fetch"
                              f" from it, add {host} to ANKISYNC_ANKICONNECT_URL_ALLOW")
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


def _get(settings, url, deadline):
    """One GET: ("redirect", next URL) or ("body", bytes)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ActionError(f"{url} is not an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ActionError(f"{url} is not an http:// or https:// URL")
    address, port = _target(settings, url, parts)
    left = deadline - time.monotonic()
    if left <= 0:  # the name took the time left (a slow resolver on a redirect's host)
        raise ActionError(f"{url} download failed: it took longer than"
                          f" {settings.ankiconnect_url_timeout:g} s")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, port, timeout=max(0.1, min(DOWNLOAD_TIMEOUT, left)))
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
    answer = None
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers={"User-Agent": "ankisync-ankiconnect"})
        answer = connection.getresponse()
        location = answer.getheader("Location")
        if answer.status in (301, 302, 303, 307, 308) and location:
            return "redirect", urllib.parse.urljoin(url, location)
        if answer.status != 200:
            raise ActionError(f"{url} download failed with return code {answer.status}")
        declared = answer.getheader("Content-Length") or ""
        data = bytearray()
        if not (declared.isdigit() and int(declared) > MAX_DOWNLOAD):
            while len(data) <= MAX_DOWNLOAD:
                if time.monotonic() >= deadline:  # a drip that beats each read's timeout
                    raise TimeoutError
                chunk = answer.read1(64 * 1024)
                if not chunk:
                    break
                data += chunk
        if len(data) > MAX_DOWNLOAD or declared.isdigit() and int(declared) > MAX_DOWNLOAD:
            raise ActionError(f"{url} download failed: larger than {MAX_DOWNLOAD // 2**20} MB")
        if time.monotonic() >= deadline:  # cut off: what came is not the whole file
            raise TimeoutError
        return "body", bytes(data)
    except (OSError, ValueError, http.client.HTTPException) as error:
        # ValueError: a name or path http.client cannot send (InvalidURL, bad IDNA)
        if time.monotonic() >= deadline:
            raise ActionError(f"{url} download failed: it took longer than"
                              f" {settings.ankiconnect_url_timeout:g} s") from None
        raise ActionError(f"{url} download failed: {type(error).__name__}") from None
    finally:
        with guard:
            live.clear()
        timer.cancel()
        if answer is not None:
            answer.close()
        connection.close()


def _download(settings, url):
    """A media file by URL: http(s) to public addresses (or ANKISYNC_ANKICONNECT_URL_ALLOW),
    redirects checked the same way, bounded in time and size."""
    if not isinstance(url, str):
        raise ActionError(f"{url} is not an http:// or https:// URL")
    deadline = time.monotonic() + settings.ankiconnect_url_timeout
    asked = url
    for _ in range(MAX_REDIRECTS + 1):
        kind, value = _get(settings, url, deadline)
        if kind == "body":
            return value
        url = value
    raise ActionError(f"{asked} download failed: more than {MAX_REDIRECTS} redirects")


def _inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def _readable(settings, real):
    """Whether a resolved path is in a folder the user named and outside our own files."""
    if any(_inside(real, never) for never in NEVER_READ):
        return False
    if _inside(real, os.path.realpath(settings.data_dir)):
        return False
    secret = settings.google_application_credentials  # our key file, wherever it lives
    if secret and real == os.path.realpath(secret):
        return False
    return any(_inside(real, os.path.realpath(folder)) for folder in settings.ankiconnect_paths)


def _read_path(settings, path):
    """A local file's bytes, if it lies in ANKISYNC_ANKICONNECT_PATHS.

    The answer is the same whether a refused path exists or not, and the file
    opened is checked again (a symlink swapped in after the first check).
    """
    refused = ActionError(f"path is not allowed: {path}: AnkiConnect reads files only from the"
                          " folders in ANKISYNC_ANKICONNECT_PATHS; set it to the folders your"
                          " tools save media in, or send the file as \"data\"")
    if not isinstance(path, str) or "\0" in path or not os.path.isabs(path):
        raise refused
    real = os.path.realpath(path)
    if not _readable(settings, real):
        raise refused
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise ActionError(f"cannot read {path}: no such file, or not readable") from None
    with os.fdopen(fd, "rb") as file:
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: cannot tell what was opened
            raise refused from None
        if not _readable(settings, opened):
            raise refused
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ActionError(f"cannot read {path}: not a file")
        if info.st_size > MAX_DOWNLOAD:
            raise ActionError(f"cannot read {path}: larger than {MAX_DOWNLOAD // 2**20} MB")
        return file.read(MAX_DOWNLOAD)


def media_bytes(settings, data=None, path=None, url=None):
    """The bytes of a media file given as base64 data, a local path or a URL."""
    if data:
        try:
            return base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError, TypeError) as error:
            raise ActionError(f"media data is not valid base64: {error}") from None
    if path:
        return _read_path(settings, path)
    if url:
        return _download(settings, url)
    raise ActionError('You must provide a "data", "path", or "url" field.')
