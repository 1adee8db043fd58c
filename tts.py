"""Spoken clips, cached by content in the media folder, from one of the voices.

The providers, each one function behind `speak`: Google Cloud Text-to-Speech (MP3,
its client library), an OpenAI-compatible server and Azure Speech (MP3, plain REST:
tts_rest.py), and espeak-ng, which runs offline on a Pi (WAV, which Anki plays
everywhere). A clip is stored in the format the provider really sent, under the
extension that says so. Worker only: `google.cloud` is imported inside functions,
so importing this module costs nothing.
"""

import hashlib
import html
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import urllib.parse
from typing import NamedTuple

import config
import credentials
import errors
import files
import tts_limit
import tts_rest

log = logging.getLogger(__name__)

PROVIDERS = ("google", "openai", "azure", "espeak")
AUDIO_FORMAT = {"google": "mp3", "openai": "mp3", "azure": "mp3", "espeak": "wav"}  # asked for
EXTENSIONS = ("mp3", "wav", "ogg", "flac", "aac")  # what a clip on disk may be
ESPEAK = "espeak-ng"
VOICES_URL = "https://cloud.google.com/text-to-speech/docs/voices"

# Innermost cloze first, so a cloze nested in another's answer unwraps too.
_CLOZE = re.compile(r"\{\{c\d+::((?:(?!\{\{|\}\}|::).)*)(?:::(?:(?!\{\{|\}\}).)*)?\}\}", re.S)
_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
# Tags that separate words when rendered; other tags (<b>, <span>) may sit inside one.
_BREAK_TAG = re.compile(
    r"</?\s*(br|p|div|li|ul|ol|dl|dt|dd|tr|td|th|table|h[1-6]|blockquote|hr|pre"
    r"|section|article|header|footer)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_LANGUAGE = re.compile(r"^([a-z]{2,3}-[A-Za-z0-9]{2,4})-")


class Voice(NamedTuple):
    """Everything that changes how a provider says a text (and so a clip's name)."""
    provider: str  # google, openai, azure, espeak
    name: str  # the provider's voice name
    rate: float = 1.0  # 1.0: the voice's own speed
    pitch: float = 0.0  # semitones (Google only)
    model: str = ""  # OpenAI-compatible servers only


def voice_for(provider, settings):
    """The voice the settings give provider."""
    if provider == "google":
        return Voice("google", settings.tts_voice, settings.google_tts_speaking_rate,
                     settings.google_tts_pitch)
    if provider == "openai":
        return Voice("openai", settings.openai_tts_voice, settings.openai_tts_speed,
                     model=settings.openai_tts_model)
    if provider == "azure":
        return Voice("azure", settings.azure_tts_voice, settings.azure_tts_rate)
    return Voice("espeak", settings.espeak_voice)


def stored(voice):
    """A voice as the job table keeps it: [provider, {what changes the audio}]."""
    return [voice.provider, voice._asdict()]


def from_stored(value):
    """The voice a job kept; jobs of older versions kept [provider, voice name]."""
    provider, voice = value
    return Voice(**voice) if isinstance(voice, dict) else Voice(provider, voice)


def job_voice(kept, current, settings, keys):
    """The voice to speak a job in: the one it was first spoken in while that provider is
    still set up (its clips may be made already), else today's."""
    if not kept:
        return current
    voice = from_stored(kept)
    if voice.provider == current.provider or usable(voice.provider, settings, keys):
        return voice
    return current


def keys(settings):
    """Each provider's key: from the environment or .env, else as `setup` stored it."""
    kept = credentials.load(config.credentials_path(settings))
    return {"google": settings.google_api_key or kept.get("google_api_key"),
            "openai": settings.openai_tts_api_key or kept.get("openai_tts_api_key"),
            "azure": settings.azure_tts_key or kept.get("azure_tts_key")}


def usable(provider, settings, keys):
    """Whether provider is set up enough to be asked (a bad key still shows when asked)."""
    if provider == "google":
        return available(keys["google"])
    if provider == "openai":
        return bool(settings.openai_tts_base_url)
    if provider == "azure":
        return bool(keys["azure"] and (settings.azure_tts_region or settings.azure_tts_endpoint))
    return provider == "espeak" and bool(shutil.which(ESPEAK))


def timeout_for(provider, settings):
    """Seconds one request of provider may take: its setting, else a slice of the job's time
    (so that a hung server ends in a retry instead of the whole job timing out)."""
    given = (settings.espeak_timeout if provider == "espeak"
             else getattr(settings, f"{provider}_tts_timeout"))
    return given or max(5, min(30, int(settings.task_timeout / 4)))


def describe(provider, settings, keys):
    """The voice in use, for the start-up log (no secret)."""
    if provider is None:
        return "none (cards without audio)"
    at_once = tts_limit.ceiling(provider, settings)
    return f"{_describe(provider, settings, keys)}, up to {at_once} requests at once"


def _describe(provider, settings, keys):
    voice = voice_for(provider, settings)
    pace = f", rate {voice.rate:g}" if voice.rate != 1.0 else ""
    if provider == "google":
        how = ("google with an API key" if keys["google"] else "google with"
               f" GOOGLE_APPLICATION_CREDENTIALS={settings.google_application_credentials}")
        pitch = f", pitch {voice.pitch:g}" if voice.pitch else ""
        return f"{how}, voice {voice.name}{pace}{pitch}"
    if provider == "openai":
        return (f"openai at {settings.openai_tts_base_url}, model {voice.model},"
                f" voice {voice.name}{pace}")
    if provider == "azure":
        where = settings.azure_tts_endpoint or f"region {settings.azure_tts_region}"
        return f"azure ({where}), voice {voice.name}{pace}"
    return f"espeak (espeak-ng), voice {voice.name}"


def temp_dir(data_dir: pathlib.Path) -> pathlib.Path:
    """Where clips are written before they move into the media folder."""
    return data_dir / "tmp"


def clean_temporaries(*folders: pathlib.Path) -> int:
    """Remove clips left half-written by a killed worker; how many were removed."""
    count = 0
    for folder in folders:
        for path in folder.glob(files.TEMP_PREFIX + "*.tmp"):
            path.unlink(missing_ok=True)
            count += 1
    return count


def speakable(text: str) -> str:
    """The words to say for a field: cloze answers kept, HTML and entities resolved."""
    count = 1
    while count:
        text, count = _CLOZE.subn(r"\1", text)
    text = _HIDDEN.sub(" ", text)
    text = _BREAK_TAG.sub(" ", text)
    text = _TAG.sub("", text)
    # Unescape last, so an escaped "&lt;b&gt;" is said rather than stripped as a tag.
    return _SPACE.sub(" ", html.unescape(text)).strip()


def available(api_key: str | None) -> bool:
    """True when there is something to authenticate to Google with."""
    credentials = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    return bool(api_key) or bool(credentials and os.path.isfile(credentials))


def choose(setting: str, api_key: str | None) -> str | None:
    """The voice provider to use: "google", "openai", "azure", "espeak" or None (no audio).

    ANKISYNC_TTS=auto takes Google when there are credentials, else espeak-ng
    when it is installed (as it always has: auto never picks a paid or remote
    service the user did not name); any other value forces the choice.
    """
    if setting == "auto":
        if available(api_key):
            return "google"
        return "espeak" if shutil.which(ESPEAK) else None
    return None if setting == "none" else setting


def _identity(text, voice):
    """What the clip's name hashes: everything that changes the audio, nothing else."""
    identity = [voice.provider, voice.name, AUDIO_FORMAT[voice.provider], speakable(text)]
    extras = {field: value for field, value, plain in (
        ("rate", voice.rate, 1.0), ("pitch", voice.pitch, 0.0), ("model", voice.model, ""))
        if value != plain}
    # Left out when plain, so clips made before rate and pitch existed keep their names.
    return json.dumps(identity + [extras] if extras else identity)


def clip_name(text: str, voice, provider: str = "google", extension: str | None = None) -> str:
    """The media file name for text in voice (a Voice, or a voice name of provider): a hash,
    so no user text reaches the disk name."""
    if isinstance(voice, str):
        voice = Voice(provider, voice)
    digest = hashlib.sha256(_identity(text, voice).encode("utf-8")).hexdigest()
    return "ankisync-%s.%s" % (digest[:24], extension or AUDIO_FORMAT[voice.provider])


def _cached(media_dir, text, voice):
    """The name of the clip already made for text in voice, in whatever format it came."""
    stem = clip_name(text, voice).rpartition(".")[0]
    for extension in EXTENSIONS:
        path = media_dir / f"{stem}.{extension}"
        if path.is_file() and path.stat().st_size > 0:
            return path.name
    return None


def audio_extension(data: bytes) -> str | None:
    """The file extension for audio data, from its first bytes; None if it is not audio."""
    if data.startswith(b"RIFF") and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"OggS"):
        return "ogg"
    if data.startswith(b"fLaC"):
        return "flac"
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:  # ADTS: layer bits 00
        return "aac"
    return "mp3" if is_mp3(data) else None


def ensure_clip(media_dir: pathlib.Path, text: str, voice: Voice, *, settings, keys: dict,
                temp_dir: pathlib.Path | None = None, clients: dict | None = None) -> str:
    """Return the name of the clip for text in media_dir, speaking it if missing.

    The clip is written in temp_dir first (default: media_dir's parent), never
    in the media folder, whose every file goes to the sync server. keys: each
    provider's key (see keys()); clients: the caller's cache of Google clients.
    """
    # A clip on disk is the cache: a job run again reuses what its last run paid for.
    name = _cached(media_dir, text, voice)
    if name:
        log.debug("reusing clip %s", name)
        return name
    words = speakable(text)
    if not words:
        raise errors.BadNote("there is nothing to say: the text is empty once cloze "
                             "markers and HTML are removed")
    audio, extension = speak(words, voice, settings=settings, keys=keys, clients=clients)
    name = clip_name(text, voice, extension=extension)
    media_dir.mkdir(parents=True, exist_ok=True)
    files.write_whole(media_dir / name, audio, temp_dir or media_dir.parent)
    log.info("wrote clip %s (%d bytes, %d characters)", name, len(audio), len(words))
    return name


def speak(words: str, voice: Voice, *, settings, keys: dict,
          clients: dict | None = None) -> tuple[bytes, str]:
    """(audio, file extension) of words said in voice by its provider; raises TTSRefused
    (a setting to fix, named) or TTSUnavailable (try again later)."""
    timeout = timeout_for(voice.provider, settings)
    if voice.provider == "google":
        return synthesize(words, voice=voice.name, api_key=keys["google"], timeout=timeout,
                          endpoint=settings.google_tts_endpoint, clients=clients,
                          rate=voice.rate, pitch=voice.pitch), "mp3"
    if voice.provider == "espeak":
        return synthesize_espeak(words, voice=voice.name, timeout=timeout, rate=voice.rate), "wav"
    if voice.provider == "openai":
        name, setting = "the OpenAI-compatible speech server", "ANKISYNC_OPENAI_TTS_BASE_URL"
        audio, kind = tts_rest.openai_speech(
            words, base_url=settings.openai_tts_base_url, api_key=keys["openai"],
            model=voice.model, voice=voice.name, speed=voice.rate, timeout=timeout)
    elif voice.provider == "azure":
        name, setting = "Azure Speech", "ANKISYNC_AZURE_TTS_ENDPOINT or _REGION"
        audio, kind = tts_rest.azure_speech(
            words, region=settings.azure_tts_region, endpoint=settings.azure_tts_endpoint,
            api_key=keys["azure"], voice=voice.name, rate=voice.rate, timeout=timeout)
    else:
        raise errors.TTSRefused(f"ANKISYNC_TTS={voice.provider!r} is no voice provider: expected"
                                " one of auto, " + ", ".join(PROVIDERS) + " or none")
    extension = audio_extension(audio)
    if extension is None:
        # LocalAI may send WAV whatever was asked: that is stored as .wav; this is not audio.
        raise errors.TTSUnavailable(
            f"{name} answered with something that is not audio ({kind or 'no content type'},"
            f" {len(audio)} bytes): check {setting}; the job will be retried")
    return audio, extension


def synthesize_espeak(text: str, *, voice: str, timeout: float, rate: float = 1.0) -> bytes:
    """WAV audio of text from the local espeak-ng; raises TTSRefused or TTSUnavailable."""
    if not shutil.which(ESPEAK):
        raise errors.TTSRefused("ANKISYNC_TTS=espeak, but espeak-ng is not installed:"
                                " apt install espeak-ng")
    # its own speed is 175 words a minute; it speaks 80 to 450
    pace = ["-s", str(min(450, max(80, round(175 * rate))))] if rate != 1.0 else []
    try:
        # The text goes in on stdin, never as an argument that could read as an option.
        done = subprocess.run([ESPEAK, "-v", voice, *pace, "--stdout"], input=text.encode(),
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise errors.TTSUnavailable(f"espeak-ng took longer than {timeout:g} s;"
                                    " the job will be retried") from None
    # (An unknown voice is not an error to espeak-ng: it falls back to its default.)
    if done.returncode != 0 or not done.stdout.startswith(b"RIFF"):
        problem = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise errors.TTSRefused(f"espeak-ng could not speak ({problem}): check"
                                f" ANKISYNC_ESPEAK_VOICE={voice!r} (espeak-ng --voices lists them)")
    return done.stdout


def language_code(voice: str) -> str:
    """The BCP-47 language a Google voice speaks: en-US-Wavenet-D -> en-US."""
    match = _LANGUAGE.match(voice)
    if not match:
        raise errors.TTSRefused(
            "ANKISYNC_TTS_VOICE %r is not a Google voice name like en-US-Wavenet-D; "
            "pick one from %s" % (voice, VOICES_URL))
    return match.group(1)


def synthesize(text: str, *, voice: str, api_key: str | None, endpoint: str | None,
               timeout: float, clients: dict | None = None, rate: float = 1.0,
               pitch: float = 0.0) -> bytes:
    """MP3 audio of text spoken by voice; raises TTSRefused or TTSUnavailable.

    clients: where to keep one client per (api_key, endpoint) (the Worker's): a
    kept client keeps its HTTPS connection, sparing a TLS handshake per clip.
    Without it, a client is made for this call.
    """
    from google.cloud import texttospeech

    language = language_code(voice)
    tuning = {}  # sent only when set: a plain request stays what it always was
    if rate != 1.0:
        tuning["speaking_rate"] = rate
    if pitch:
        tuning["pitch"] = pitch
    try:
        response = _client(api_key, endpoint, clients).synthesize_speech(
            input=texttospeech.SynthesisInput(text=text),
            voice=texttospeech.VoiceSelectionParams(language_code=language, name=voice),
            audio_config=texttospeech.AudioConfig(
                audio_encoding=texttospeech.AudioEncoding.MP3, **tuning),
            # No retries here: a failed job is retried by the queue, with backoff.
            retry=None,
            timeout=timeout,
        )
    except Exception as e:
        problem = _translate(e, voice=voice, api_key=api_key, endpoint=endpoint)
        if problem is None:
            raise
        # The message says what matters; the client's chained internals stay out of
        # job logs, and with them anything that could echo a credential.
        raise problem from None
    if not response.audio_content:
        raise errors.TTSUnavailable("Google text-to-speech answered without audio; "
                                    "the job will be retried")
    if not is_mp3(response.audio_content):
        # protobuf decodes base64 leniently: junk text comes out as junk bytes
        raise errors.TTSUnavailable("Google text-to-speech answered with something that is"
                                    " not MP3 audio; the job will be retried")
    return response.audio_content


def is_mp3(data: bytes) -> bool:
    """Whether data starts like an MP3 file: an ID3 tag or an MPEG audio frame header."""
    # frame sync (11 bits set) and a layer (bits 00 are AAC's ADTS, not MPEG audio)
    return data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF
                                       and data[1] & 0xE0 == 0xE0 and data[1] & 0x06 != 0)


def _client(api_key, endpoint, clients):
    """The client for these settings, kept in clients; built on first use.

    Two threads racing to build one only waste a client.
    """
    if clients is None:
        return _make_client(api_key, endpoint)
    client = clients.get((api_key, endpoint))
    if client is None:
        client = clients[(api_key, endpoint)] = _make_client(api_key, endpoint)
    return client


def _make_client(api_key, endpoint):
    from google.cloud import texttospeech

    options = {}
    credentials = None
    if api_key:
        options["api_key"] = api_key
    if endpoint:
        # The REST transport keeps an http:// scheme given in api_endpoint, which
        # is how tests and local proxies are reached without TLS.
        options["api_endpoint"] = endpoint
        if not api_key and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            # A test endpoint or an authenticating proxy: don't hunt for
            # credentials (the hunt probes the GCE metadata server).
            from google.auth.credentials import AnonymousCredentials
            credentials = AnonymousCredentials()
        if endpoint.startswith("http://") and api_key and not _is_loopback(endpoint):
            log.warning("the Google API key is sent unencrypted to %s", endpoint)
    log.info("Google text-to-speech client for %s (%s)", endpoint or "Google",
             "API key" if api_key else "default credentials")
    # REST everywhere: the path tests exercise is the path production takes, and it
    # spares a Pi gRPC's channel threads.
    client = texttospeech.TextToSpeechClient(
        credentials=credentials, client_options=options, transport="rest")
    # requests keeps 10 connections; the clips in flight (tts_limit) may be many more,
    # and each connection past 10 would be closed after its answer (a TLS handshake per
    # clip again, and a warning). A cap, not connections made in advance.
    import requests.adapters
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=tts_limit.MOST_IN_FLIGHT)
    for scheme in ("https://", "http://"):
        client.transport._session.mount(scheme, adapter)
    return client


def _is_loopback(endpoint):
    return config.is_loopback(urllib.parse.urlsplit(endpoint).hostname or "")


def _translate(e, *, voice, api_key, endpoint):
    """The ankisync error for a failure of the Google client, or None if unexpected."""
    import requests
    from google.api_core import exceptions as google_errors
    from google.auth import exceptions as auth_errors
    from google.protobuf import json_format

    key_hint = ("check that ANKISYNC_GOOGLE_API_KEY (or the key given to `./run.sh "
                "setup`) is a valid key with the Cloud Text-to-Speech API enabled"
                if api_key else
                "set ANKISYNC_GOOGLE_API_KEY, or check that the service account in "
                "GOOGLE_APPLICATION_CREDENTIALS may use the Cloud Text-to-Speech API")
    retried = "the job will be retried"
    if isinstance(e, google_errors.GoogleAPICallError) and e.code is not None:
        detail = "%s: %s" % (e.code, _redact(_google_message(e), api_key))
        if 400 <= e.code < 500 and e.code != 429:
            if e.code in (401, 403) or e.reason == "API_KEY_INVALID" or "API key" in detail:
                hint = key_hint
            elif e.code == 404 and endpoint:
                hint = "check ANKISYNC_GOOGLE_TTS_ENDPOINT (%s)" % endpoint
            else:
                hint = ("check that ANKISYNC_TTS_VOICE (%s) is a voice listed at %s"
                        % (voice, VOICES_URL))
            return errors.TTSRefused(
                "Google refused the text-to-speech request (%s): %s" % (detail, hint))
        if e.code == 429:  # RESOURCE_EXHAUSTED: the quota; tts_limit slows down
            return tts_limit.RateLimited(
                "Google text-to-speech is rate-limiting (%s); %s" % (detail, retried),
                retry_after=_google_retry_after(e))
        return errors.TTSUnavailable(
            "Google text-to-speech is unavailable (%s); %s" % (detail, retried))
    if isinstance(e, google_errors.GoogleAPIError):  # RetryError and the like
        return errors.TTSUnavailable("Google text-to-speech is unavailable (%s); %s"
                                     % (_redact(str(e), api_key), retried))
    if isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                      requests.exceptions.InvalidSchema)):
        return errors.TTSRefused(
            "ANKISYNC_GOOGLE_TTS_ENDPOINT %r is not a usable URL, like "
            "http://127.0.0.1:8099" % endpoint)
    if isinstance(e, requests.exceptions.Timeout):
        return errors.TTSUnavailable(
            "Google text-to-speech did not answer in time; %s" % retried)
    if isinstance(e, (requests.exceptions.RequestException, auth_errors.TransportError)):
        return errors.TTSUnavailable("Google text-to-speech could not be reached (%s); %s"
                                     % (type(e).__name__, retried))
    if isinstance(e, (json_format.Error, ValueError)):
        # A 200 whose body is not Google's JSON: a proxy's HTML page, a cut answer
        return errors.TTSUnavailable(
            "Google text-to-speech answered with something that is not a text-to-speech"
            " answer (%s); %s" % (_redact(str(e), api_key)[:200], retried))
    if isinstance(e, auth_errors.GoogleAuthError):  # no credentials, or bad ones
        return errors.TTSRefused(
            "Google credentials are missing or unusable (%s): set "
            "ANKISYNC_GOOGLE_API_KEY, or point GOOGLE_APPLICATION_CREDENTIALS at a "
            "service account key file" % _redact(str(e), api_key))
    return None


def _google_retry_after(e):
    """Seconds a 429 of Google's asks to wait: its Retry-After header, else the RetryInfo
    detail of its error body ("retryDelay": "30s"), else None."""
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    delays = [detail.get("retryDelay") for detail in e.details or ()
              if isinstance(detail, dict) and detail.get("@type", "").endswith(".RetryInfo")]
    return tts_limit.retry_after(headers.get("Retry-After") or (delays or [None])[0])


def _google_message(e):
    """Google's own words for an error, without the method and URL the client adds."""
    message = e.message or ""
    if message.startswith(("POST ", "GET ")) and ": " in message:
        message = message.split(": ", 1)[1]
    # A proxy's HTML error page can be long; the start says enough.
    return _SPACE.sub(" ", message).strip()[:300]


def _redact(message, api_key):
    """Google's text with the key masked, should a server ever echo it."""
    return message.replace(api_key, "[API key]") if api_key else message


def prepare(settings, keys: dict, clients: dict) -> None:
    """Build the provider's client now (at worker start), not for the first card.

    Importing and building Google's client takes 0.4-0.9 s; the other providers
    need nothing built.
    """
    if choose(settings.tts, keys["google"]) == "google":
        _client(keys["google"], settings.google_tts_endpoint, clients)
