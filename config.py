"""Every setting ankisync reads, in one table, parsed and checked at start.

Values come from the environment, then from `ANKISYNC_DATA_DIR/.env` (lines of
`NAME=value`), then the defaults below, which suit a Raspberry Pi. A bad value
stops the process with a message naming the variable, the value and its source.
"""

import functools
import ipaddress
import os
import re
from collections import namedtuple
from pathlib import Path

from errors import ConfigError

ANKIWEB = "AnkiWeb"  # shown when no sync endpoint is set: anki's own default


def _listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]"), int(port)


def _optional_listen(value):
    return _listen(value) if value else None


def _seconds(value):
    number = float(value)
    if number <= 0:
        raise ValueError("expected a positive number of seconds")
    return number


def _count(value):
    number = int(value)
    if number < 1:
        raise ValueError("expected a whole number, at least 1")
    return number


def _url(value):
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("expected a URL starting with http:// or https://")
    return value or None


def _origins(value):
    origins = [o.strip() for o in value.split(",") if o.strip()]
    if not origins:
        raise ValueError('expected "*" or a comma-separated list of origins')
    return origins


def _folders(value):
    folders = [f.strip() for f in value.split(",") if f.strip()]
    for folder in folders:
        if not os.path.isabs(folder):
            raise ValueError(f"{folder!r} is not an absolute folder, e.g. /home/me/Pictures")
    return tuple(folders)


def _targets(value):
    """Hosts (lower-cased names) and IP networks, comma-separated."""
    targets = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        try:
            targets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or ":" in entry or " " in entry:
                raise ValueError(f"{entry!r} is neither a host name nor an IP network"
                                 " such as 192.168.1.0/24") from None
            targets.append(entry.lower().rstrip("."))
    return tuple(targets)


def _web_origins(value):
    """Origins a browser sends (scheme://host[:port]), lower-cased as browsers do, or "*"."""
    origins = _origins(value)
    if origins == ["*"]:
        return origins
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if (not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme)
                or not re.fullmatch(r"[^/?#@\s]+", rest) or rest.endswith(":")):
            raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], with no"
                             " path and no trailing slash, e.g. https://dictionary.cambridge.org"
                             ' (several separated by commas, or "*" for any)')
    return [origin.lower() for origin in origins]


def _hosts(value):
    hosts = [host.strip().lower().rstrip(".") for host in value.split(",") if host.strip()]
    for host in hosts:
        if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", host):
            raise ValueError(f"{host!r} is not a host name: write names only, such as"
                             " anki.home.example (no scheme, port or path), comma-separated")
    return hosts


def _audio_hosts(value):
    """Hosts recordings may be fetched from (host, host:port, [v6]:port): (host, port)."""
    hosts = []
    for entry in (e.strip().lower().rstrip(".") for e in value.split(",")):
        if not entry:
            continue
        match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)(?::([0-9]{1,5}))?",
                             entry)
        if not match or match[2] and not 0 < int(match[2]) < 65536:
            raise ValueError(f"{entry!r} is not a host or host:port, such as"
                             " dictionary.cambridge.org or 127.0.0.1:8000 (no scheme or path),"
                             " comma-separated")
        if match[1].startswith("["):
            try:
                ipaddress.IPv6Address(match[1][1:-1])
            except ValueError:
                raise ValueError(f"{entry!r} holds no IPv6 address between [ ]") from None
        hosts.append((match[1], int(match[2]) if match[2] else None))
    return tuple(hosts)


def _level(value):
    value = value.upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


def _tts(value):
    value = value.lower()
    if value not in ("auto", "google", "openai", "azure", "espeak", "none"):
        raise ValueError("expected auto, google, openai, azure, espeak or none")
    return value


def _between(low, high):
    """A parser of a number from low to high (a speaking rate, a pitch)."""
    def parse(value):
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}")
        return number
    return parse


def _in_flight(value):
    """auto (None: the provider's own default, tts_limit.CEILINGS) or a count, 1 to 256."""
    if value.lower() == "auto":
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 256:
        raise ValueError("expected auto or a whole number from 1 to 256")
    return int(value)


def _optional_seconds(value):
    return _seconds(value) if value else None


def _region(value):
    # it becomes part of a host name: nothing that could name another host
    if value and not re.fullmatch(r"[a-z0-9]+", value):
        raise ValueError("expected an Azure region name such as westeurope or eastus")
    return value or None


def _text(value):
    return value or None


def _name(value):
    if not value.strip():
        raise ValueError("expected a name, such as User 1")
    return value


def _notify_urls(value):
    """Apprise notification URLs, separated by spaces or newlines (commas belong to URLs)."""
    urls = value.split()
    for number, url in enumerate(urls, 1):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", url):
            # the URL itself is not shown: it may hold a token
            raise ValueError(f"URL {number} is not an Apprise URL such as ntfy://ntfy.sh/TOPIC"
                             " or json://host/path (several separated by spaces)")
    return tuple(urls)


def _on_off(value):
    value = value.lower()
    if value not in ("on", "off"):
        raise ValueError("expected on or off")
    return value == "on"


def _interval(value):
    """Seconds between runs of something optional; empty or 0: off."""
    return _seconds(value) if value and value != "0" else None


def _key_file(value):
    if value and not os.path.isfile(value):
        raise ValueError("no such file: give the path of a Google service account key (JSON)")
    return value or None


# name, default, parser, help. The attribute is the name without the prefix.
SETTINGS = [
    ("ANKISYNC_DATA_DIR", "./data", Path, "SQLite file, collection, media, credentials"),
    ("ANKISYNC_LISTEN", "127.0.0.1:5000", _listen, "host:port of the HTTP API"),
    ("ANKISYNC_SYNC_ENDPOINT", "", _url, "sync server URL (empty: AnkiWeb)"),
    ("ANKISYNC_GOOGLE_API_KEY", "", _text, "Google TTS API key (or GOOGLE_APPLICATION_CREDENTIALS)"),
    ("ANKISYNC_GOOGLE_TTS_ENDPOINT", "", _url, "TTS API endpoint override (tests, proxies)"),
    ("ANKISYNC_TTS", "auto", _tts,
     "voice: google, openai (or a compatible server), azure, espeak (offline, espeak-ng),"
     " none, or auto (Google if it has a key, else espeak-ng if installed, else none)"),
    ("ANKISYNC_TTS_VOICE", "en-US-Wavenet-D", str, "Google voice name"),
    ("ANKISYNC_GOOGLE_TTS_SPEAKING_RATE", "1.0", _between(0.25, 4.0),
     "Google speaking rate, 0.25 to 4.0 (1.0: the voice's own)"),
    ("ANKISYNC_GOOGLE_TTS_PITCH", "0", _between(-20, 20),
     "Google pitch in semitones, -20 to 20"),
    ("ANKISYNC_GOOGLE_TTS_TIMEOUT", "", _optional_seconds,
     "seconds one Google request may take (empty: a quarter of ANKISYNC_TASK_TIMEOUT, 5 to 30)"),
    ("ANKISYNC_OPENAI_TTS_BASE_URL", "", _url,
     "OpenAI-compatible speech server, e.g. https://api.openai.com or http://127.0.0.1:8880"
     " (Kokoro-FastAPI); POST BASE/v1/audio/speech"),
    ("ANKISYNC_OPENAI_TTS_API_KEY", "", _text,
     "its key (empty: none sent, as local servers want)"),
    ("ANKISYNC_OPENAI_TTS_MODEL", "tts-1", str, "its model (tts-1, tts-1-hd, kokoro...)"),
    ("ANKISYNC_OPENAI_TTS_VOICE", "alloy", str, "its voice (alloy, af_heart...)"),
    ("ANKISYNC_OPENAI_TTS_SPEED", "1.0", _between(0.25, 4.0), "its speed, 0.25 to 4.0"),
    ("ANKISYNC_OPENAI_TTS_TIMEOUT", "", _optional_seconds,
     "seconds one request to it may take (empty: as for Google)"),
    ("ANKISYNC_AZURE_TTS_KEY", "", _text, "Azure Speech resource key"),
    ("ANKISYNC_AZURE_TTS_REGION", "", _region, "Azure Speech resource region, e.g. westeurope"),
    ("ANKISYNC_AZURE_TTS_ENDPOINT", "", _url,
     "Azure speech URL instead of the region's (custom voices, proxies)"),
    ("ANKISYNC_AZURE_TTS_VOICE", "en-US-JennyNeural", str, "Azure voice name"),
    ("ANKISYNC_AZURE_TTS_RATE", "1.0", _between(0.5, 2.0), "Azure speaking rate, 0.5 to 2.0"),
    ("ANKISYNC_AZURE_TTS_TIMEOUT", "", _optional_seconds,
     "seconds one Azure request may take (empty: as for Google)"),
    ("ANKISYNC_TTS_IN_FLIGHT", "auto", _in_flight,
     "text-to-speech requests at once, at most (auto: the provider's own: google 64,"
     " openai 4, azure 8, espeak one per core); a 429 lowers it for a while"),
    ("ANKISYNC_ESPEAK_VOICE", "en-us", str, "espeak-ng voice (espeak-ng --voices)"),
    ("ANKISYNC_ESPEAK_TIMEOUT", "", _optional_seconds,
     "seconds espeak-ng may take for one clip (empty: as for Google)"),
    ("ANKISYNC_DECK", "English Vocabulary", str, "deck that new cards go to"),
    ("ANKISYNC_AUDIO_URL_HOSTS", "dictionary.cambridge.org", _audio_hosts,
     "hosts a card's `wordAudioUrl` may be fetched from, comma-separated: host (its"
     " scheme's default port) or host:port; a name resolving to a private address is"
     " refused, an IP address listed is not (empty: none)"),
    ("ANKISYNC_TASK_TIMEOUT", "300", _seconds, "seconds a job may run"),
    ("ANKISYNC_RESULT_TTL", "86400", _seconds, "seconds finished jobs stay queryable"),
    ("ANKISYNC_ACCESS_TOKEN_TTL", "3600", _seconds, "seconds an access token lasts"),
    ("ANKISYNC_REFRESH_TOKEN_TTL", "15552000", _seconds, "seconds a refresh token lasts (180 days)"),
    ("ANKISYNC_REFRESH_REUSE_INTERVAL", "60", _seconds,
     "seconds a used refresh token still returns a pair (two tabs refreshing at once)"),
    ("ANKISYNC_CORS_ORIGINS", "https://dictionary.cambridge.org", _web_origins,
     "browser origins allowed to call the API (scheme://host[:port], comma-separated, or *)"),
    ("ANKISYNC_ALLOWED_HOSTS", "", _hosts,
     "extra names clients may reach the API by (Host header), comma-separated; IP"
     " addresses, localhost and this machine's name always work"),
    ("ANKISYNC_CARD_BURST", "300", _count, "cards one login may post at once before 429"),
    ("ANKISYNC_CARD_RATE", "1", _seconds, "cards per second a login's allowance refills"),
    ("ANKISYNC_MAX_QUEUED", "2000", _count, "unfinished jobs before new cards get 429"),
    ("ANKISYNC_MAX_ATTEMPTS", "10", _count, "tries of a job before it fails for good"),
    ("ANKISYNC_RETRY_DELAY", "5", _seconds, "first retry delay; doubles each try"),
    ("ANKISYNC_RETRY_MAX_DELAY", "600", _seconds, "longest delay between tries"),
    ("ANKISYNC_ANKICONNECT_LISTEN", "127.0.0.1:8765", _optional_listen,
     "host:port of the AnkiConnect endpoint (empty: off)"),
    ("ANKISYNC_ANKICONNECT_KEY", "", _text, "AnkiConnect API key (required off loopback)"),
    ("ANKISYNC_ANKICONNECT_ORIGINS", "http://localhost,chrome-extension://*,moz-extension://*",
     _origins, "browser origins allowed to call AnkiConnect, comma-separated"),
    ("ANKISYNC_ANKICONNECT_PATHS", "", _folders,
     "absolute folders whose files AnkiConnect may read as media `path` (empty: none)"),
    ("ANKISYNC_ANKICONNECT_URL_ALLOW", "", _targets,
     "local hosts or networks AnkiConnect may fetch media `url`s from (empty: public only)"),
    ("ANKISYNC_ANKICONNECT_URL_TIMEOUT", "30", _seconds,
     "seconds one AnkiConnect media download may take in all"),
    ("ANKISYNC_ANKICONNECT_PROFILE", "User 1", _name,
     "the profile name AnkiConnect answers (getProfiles, loadProfile, notesInfo)"),
    ("ANKISYNC_NOTIFY", "", _notify_urls,
     "Apprise URLs to alert when a person is needed, space-separated (empty: no alerts)"),
    ("ANKISYNC_METRICS", "off", _on_off, "on: Prometheus metrics at /metrics"),
    ("ANKISYNC_METRICS_KEY", "", _text,
     "bearer token /metrics requires from other machines (empty: loopback only)"),
    ("ANKISYNC_SYNC_INTERVAL", "", _interval,
     "seconds between syncs that pull other devices' changes (empty: only when cards come)"),
    ("ANKISYNC_BACKUP_DIR", "", _text,
     "folder `./run.sh backup` and the schedule write to (empty: DATA_DIR/backups)"),
    ("ANKISYNC_BACKUP_INTERVAL", "", _interval,
     "seconds between scheduled backups by the worker, when something changed (empty: off)"),
    ("ANKISYNC_BACKUP_KEEP", "7", _count, "backups kept; older ones are deleted"),
    ("ANKISYNC_LOG_LEVEL", "INFO", _level, "DEBUG, INFO, WARNING or ERROR"),
    # Google's own name, read by its library from the environment: ankisync
    # reads it like the others and hands it on, so data/.env works too.
    ("GOOGLE_APPLICATION_CREDENTIALS", "", _key_file,
     "Google service account key file, instead of an API key"),
]


# Settings that hold secrets: never shown, and may come from a NAME_FILE.
SECRETS = {"ANKISYNC_NOTIFY"}


def is_secret(name):
    return "KEY" in name or name in SECRETS


def _attribute(name):
    return name.removeprefix("ANKISYNC_").lower()


Settings = namedtuple("Settings", [_attribute(name) for name, *_ in SETTINGS] + ["sources"])


def is_loopback(host):
    """Whether host is this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def weak_key(key):
    """Why a key is too easy to guess from the network, or None."""
    if len(key) < 16 or len(set(key)) < 8:
        return "it needs at least 16 characters, 8 of them different"
    return None


def check(settings):
    """Checks across settings; a ConfigError naming the variables."""
    if settings.tts == "openai" and not settings.openai_tts_base_url:
        raise ConfigError("ANKISYNC_TTS=openai needs ANKISYNC_OPENAI_TTS_BASE_URL:"
                          " https://api.openai.com for OpenAI, or your server's address,"
                          " e.g. http://127.0.0.1:8880 for Kokoro-FastAPI")
    if settings.tts == "azure" and not (settings.azure_tts_region or settings.azure_tts_endpoint):
        raise ConfigError("ANKISYNC_TTS=azure needs ANKISYNC_AZURE_TTS_REGION (your Speech"
                          " resource's region, e.g. westeurope) or ANKISYNC_AZURE_TTS_ENDPOINT")
    if settings.ankiconnect_listen:
        host, port = settings.ankiconnect_listen
        key = settings.ankiconnect_key
        if not is_loopback(host) and not key:
            raise ConfigError(
                f"ANKISYNC_ANKICONNECT_LISTEN={host}:{port} is reachable from other machines:"
                " set ANKISYNC_ANKICONNECT_KEY (clients send it as \"key\"), or listen on"
                " 127.0.0.1, or set it empty to turn AnkiConnect off")
        if not is_loopback(host) and weak_key(key):
            # the network can guess a short key (a throttle only slows it down)
            raise ConfigError(
                f"ANKISYNC_ANKICONNECT_KEY from {settings.sources['ANKISYNC_ANKICONNECT_KEY']}"
                f" is too weak for ANKISYNC_ANKICONNECT_LISTEN={host}:{port}, which other"
                f" machines reach: {weak_key(key)}. Make one with `openssl rand -base64 24`"
                " and give the same key to your AnkiConnect clients")
    check_observing(settings)
    return settings


# AnkiWeb's terms discourage automated access: a periodic sync with it stays rare
ANKIWEB_SYNC_INTERVAL = 600


def check_observing(settings):
    """The metrics key and the periodic sync, checked against the other settings."""
    key = settings.metrics_key
    if key and weak_key(key):
        raise ConfigError(
            f"ANKISYNC_METRICS_KEY from {settings.sources['ANKISYNC_METRICS_KEY']} is too weak"
            f" for other machines to send: {weak_key(key)}. Make one with"
            " `openssl rand -base64 24` and give it to Prometheus as its bearer token")
    interval = settings.sync_interval
    if interval and not settings.sync_endpoint and interval < ANKIWEB_SYNC_INTERVAL:
        raise ConfigError(
            f"ANKISYNC_SYNC_INTERVAL={interval:g} from {settings.sources['ANKISYNC_SYNC_INTERVAL']}"
            f" would sync with AnkiWeb more than every {ANKIWEB_SYNC_INTERVAL} s, which its terms"
            f" frown on: set at least {ANKIWEB_SYNC_INTERVAL}, or use your own sync server"
            " (ANKISYNC_SYNC_ENDPOINT)")


def read_env_file(path):
    """NAME=value lines of a .env-style file; blank lines and # comments skipped."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            # the line itself is not shown: it may be a key pasted without its name
            raise ConfigError(f"{path}, line {number}: expected NAME=value (a line with no"
                              f" '=', {len(line)} characters long)")
        values[name.strip()] = value.strip().strip("'\"")
    return values


def update_env_file(path, **values):
    """Set NAME=value lines in a .env-style file, keeping its other lines."""
    lines = path.read_text().splitlines() if path.is_file() else []
    lines = [line for line in lines if line.partition("=")[0].strip() not in values]
    lines += [f"{name}={value}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


def _read_secret(path, name):
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"{name}={path}: cannot read it ({error.strerror})") from None


def load(environ=None):
    """Settings from the environment, the data dir's .env file and the defaults."""
    environ = os.environ if environ is None else environ
    data_dir = Path(environ.get("ANKISYNC_DATA_DIR") or "./data")
    env_file = data_dir / ".env"
    file_values = read_env_file(env_file) if env_file.is_file() else {}
    values, sources = {}, {}
    for name, default, parse, _ in SETTINGS:
        if name in environ:
            raw, source = environ[name], "environment"
        elif is_secret(name) and environ.get(name + "_FILE"):  # a secret kept out of ps and env
            raw, source = _read_secret(environ[name + "_FILE"], name + "_FILE"), name + "_FILE"
        elif name in file_values:
            raw, source = file_values[name], str(env_file)
        else:
            raw, source = default, "default"
        try:
            values[_attribute(name)] = parse(raw)
        except ValueError as error:
            shown = "(hidden)" if is_secret(name) else repr(raw)
            raise ConfigError(f"{name}={shown} from {source}: {error}") from None
        sources[name] = source
    return check(Settings(**values, sources=sources))


@functools.cache
def current():
    """The settings of this process, loaded once."""
    return load()


def describe(settings, voice=None):
    """Lines for the start-up log: what was loaded, secrets left out."""
    on_defaults = all(source == "default" for source in settings.sources.values())
    host, port = settings.listen
    connect = settings.ankiconnect_listen
    lines = [
        f"data dir {settings.data_dir.resolve()}",
        f"API on http://{host}:{port}",
        f"AnkiConnect on http://{connect[0]}:{connect[1]}" if connect
        else "AnkiConnect off (ANKISYNC_ANKICONNECT_LISTEN is empty)",
        f"sync endpoint {settings.sync_endpoint or ANKIWEB}",
        f"deck {settings.deck!r}" + (f", text-to-speech {voice}" if voice else ""),
    ]
    if on_defaults:
        lines.append("running on default settings only (see README: Configuration)")
    else:
        lines.append("settings from " + ", ".join(sorted(set(settings.sources.values())
                                                           - {"default"})))
    return lines


def reference():
    """The settings table as Markdown, for the README and --help."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {f'`{default}`' if default else '(empty)'} | {help_} |"
             for name, default, _, help_ in SETTINGS]
    return "\n".join(rows)


# Paths inside the data dir: one place for each.
def db_path(settings):
    return settings.data_dir / "ankisync.db"


def collection_path(settings):
    return settings.data_dir / "collection.anki2"


def media_dir(settings):
    return settings.data_dir / "collection.media"


def packages_dir(settings):
    """The one folder AnkiConnect's exportPackage writes to and importPackage reads from."""
    return settings.data_dir / "packages"


def credentials_path(settings):
    return settings.data_dir / "credentials.json"


def worker_pid_path(settings):
    return settings.data_dir / "worker.pid"


def wakeup_path(settings):
    return settings.data_dir / "worker.wake"


def lock_path(settings, role):
    """Held by the running API ("api") or worker ("worker"): one of each per data dir;
    "init" is held by any process while it checks and creates the data dir's files."""
    return settings.data_dir / f"{role}.lock"


def backup_dir(settings):
    """Where backups go: ANKISYNC_BACKUP_DIR, else the data dir's backups folder."""
    return Path(settings.backup_dir) if settings.backup_dir else settings.data_dir / "backups"


def ensure_data_dir(settings):
    """Create the data dir, readable by its owner only: it holds credentials."""
    path = settings.data_dir
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:  # made by hand, or by someone else
        try:
            path.chmod(0o700)
        except PermissionError:
            raise ConfigError(f"{path} can be read by other users and is not ours to fix:"
                              f" chmod 700 {path} (ANKISYNC_DATA_DIR)") from None
