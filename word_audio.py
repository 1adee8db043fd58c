"""A card's own recording of its word (wordAudioUrl), fetched by the worker and kept as media.

Fetched only from ANKISYNC_AUDIO_URL_HOSTS, each redirect checked against the list
too, through download.py's checked fetch: a host name that resolves to this
machine or a private network is refused; an IP address listed is taken at its
word. What arrives must be audio by its first bytes (a content type proves
nothing); it is stored under a name made of its hash, with the extension of its
real format.
"""

import hashlib
import ipaddress
import logging

import card_options
import download
import errors
import files
import tts

log = logging.getLogger(__name__)

MAX_BYTES = 5 * 2**20  # a word's recording is tens of KB
SETTING = "ANKISYNC_AUDIO_URL_HOSTS as an IP address (a name is never fetched from a private one)"


def audio_extension(data):
    """The extension of audio data by its first bytes: MP3, WAV, OGG, FLAC, AAC, M4A, WebM."""
    found = tts.audio_extension(data)
    if found:
        return found
    if data[4:8] == b"ftyp":  # ISO media: M4A, MP4 audio
        return "m4a"
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: WebM, Matroska
        return "webm"
    return None


def _listed_address(host, ip):
    """Whether host is the IP address itself (listed, as the URL check made sure), not a name."""
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


def fetch(url, hosts, timeout):
    """(bytes, extension) of the recording at url; raises WordAudioRefused or
    WordAudioUnavailable (worth retrying: a timeout, a server error)."""
    def check(address):
        if not card_options.allowed_url(address, hosts):
            raise download.DownloadError(
                f"{address} is not on a host of ANKISYNC_AUDIO_URL_HOSTS"
                f" ({card_options.listed(hosts)})", "refused")

    try:
        data = download.fetch(url, timeout=timeout, max_bytes=MAX_BYTES, exempt=_listed_address,
                              setting=SETTING, check=check)
    except download.DownloadError as error:
        status = error.status or 0
        if error.kind in ("timeout", "unreachable") or status >= 500 or status in (408, 429):
            raise errors.WordAudioUnavailable(
                f"wordAudioUrl: {error}; the job will be retried") from None
        raise errors.WordAudioRefused(
            f"wordAudioUrl: {error}; send another recording's URL, or leave wordAudioUrl out"
            " to have the word spoken") from None
    extension = audio_extension(data)
    if extension is None:
        raise errors.WordAudioRefused(
            f"wordAudioUrl: {url} is not audio (it starts {data[:16]!r}): send the URL of an"
            " MP3, OGG, WAV, M4A or WebM recording, or leave wordAudioUrl out")
    return data, extension


def ensure(url, media_dir, *, hosts, timeout, temp_dir):
    """The media file name of the recording at url, fetched and stored (named by its hash)."""
    data, extension = fetch(url, hosts, timeout)
    name = f"ankisync-word-{hashlib.sha256(data).hexdigest()[:24]}.{extension}"
    path = media_dir / name
    if not (path.is_file() and path.stat().st_size == len(data)):
        media_dir.mkdir(parents=True, exist_ok=True)
        files.write_whole(path, data, temp_dir)
        log.info("wrote recording %s (%d bytes) from %s", name, len(data), url)
    return name
