"""Where a media file's bytes come from: base64 data, a local path, or a URL.

The service runs all the time, unlike the add-on, so this door is narrow:
`path`s only from folders the user named (never our data dir or the kernel's
files), `url`s only from public addresses (or ones the user allowed), bounded
in time and size, redirects checked the same way.
"""

import base64
import binascii
import os
import stat

import download
from ankiconnect.dispatch import ActionError

MAX_DOWNLOAD = 32 * 1024 * 1024   # media fetched by url or read from a path
# Never a media source, whatever the folders allowed: our secrets and the kernel's.
NEVER_READ = ("/proc", "/sys", "/dev")


def _download(settings, url):
    """A media file by URL: http(s) to public addresses (or ANKISYNC_ANKICONNECT_URL_ALLOW),
    redirects checked the same way, bounded in time and size (download.py)."""
    allowed = settings.ankiconnect_url_allow

    def exempt(host, ip):
        return host.lower().rstrip(".") in allowed or any(
            ip.version == entry.version and ip in entry
            for entry in allowed if not isinstance(entry, str))

    try:
        return download.fetch(url, timeout=settings.ankiconnect_url_timeout,
                              max_bytes=MAX_DOWNLOAD, exempt=exempt,
                              setting="ANKISYNC_ANKICONNECT_URL_ALLOW",
                              user_agent="ankisync-ankiconnect")
    except download.DownloadError as error:
        raise ActionError(str(error)) from None


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
