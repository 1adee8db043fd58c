"""The voices reached over plain HTTP(S) with the standard library: an OpenAI-compatible
`/v1/audio/speech` server (OpenAI, Kokoro-FastAPI, openedai-speech, LocalAI) and Azure
Speech's REST endpoint.

Each is one documented POST that answers with the audio bytes: urllib does it
without an SDK (Azure's is ~100 MB of native code, OpenAI's pulls httpx and pydantic
into the worker of a Pi), and without a redirect, which would carry the key to
whatever host the redirect names. Every failure becomes TTSRefused (a person must
fix a setting, which the message names) or TTSUnavailable (retried).
"""

import functools
import http.client
import json
import logging
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import namedtuple
from xml.sax.saxutils import escape, quoteattr

import config
import errors
import tts_limit

log = logging.getLogger(__name__)

USER_AGENT = "ankisync"
MAX_AUDIO = 20 * 1024 * 1024  # a word or a sentence is tens of KB; more is a broken server
AZURE_FORMAT = "audio-24khz-48kbitrate-mono-mp3"
AZURE_VOICES_URL = "https://learn.microsoft.com/azure/ai-services/speech-service/language-support"
_AZURE_LANGUAGE = re.compile(r"^([a-z]{2,3}-[A-Za-z0-9]{2,4})-\w")
# Characters XML 1.0 cannot hold at all, even escaped: a card could carry them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises the 3xx as an HTTPError, handled below


_OPENER = urllib.request.build_opener(_NoRedirect)


def openai_url(base):
    """The speech URL under an OpenAI-compatible base URL; "/v1" may be given or not."""
    base = base.rstrip("/")
    return (base if base.endswith("/v1") else base + "/v1") + "/audio/speech"


def azure_url(region, endpoint):
    """Azure's synthesis URL: the endpoint as given (a bare host gets the standard path),
    else the region's."""
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        return endpoint if parts.path.strip("/") else endpoint.rstrip("/") + "/cognitiveservices/v1"
    return f"https://{region}.tts.speech.microsoft.com/cognitiveservices/v1"


def openai_speech(text, *, base_url, api_key, model, voice, speed, timeout):
    """Audio (bytes, content type) of text from an OpenAI-compatible server, MP3 asked for."""
    if not base_url:
        raise errors.TTSRefused(
            "ANKISYNC_TTS=openai needs ANKISYNC_OPENAI_TTS_BASE_URL: https://api.openai.com for"
            " OpenAI, or your server's address, e.g. http://127.0.0.1:8880 for Kokoro-FastAPI")
    body = {"model": model, "input": text, "voice": voice, "response_format": "mp3"}
    if speed != 1.0:  # servers that know no speed (LocalAI's backends) then see nothing new
        body["speed"] = speed
    headers = {"Content-Type": "application/json", "Accept": "audio/*, */*",
               "User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    service = Service("the OpenAI-compatible speech server", "ANKISYNC_OPENAI_TTS_BASE_URL",
                      base_url, "ANKISYNC_OPENAI_TTS_API_KEY", api_key,
                      "ANKISYNC_OPENAI_TTS_TIMEOUT",
                      f"ANKISYNC_OPENAI_TTS_VOICE ({voice!r}), ANKISYNC_OPENAI_TTS_MODEL"
                      f" ({model!r}) and ANKISYNC_OPENAI_TTS_SPEED ({speed:g})")
    return _post(service, openai_url(base_url), json.dumps(body).encode(), headers, timeout)


def ssml(text, voice, rate):
    """The SSML document Azure speaks: text escaped, the voice's language, rate in <prosody>."""
    match = _AZURE_LANGUAGE.match(voice)
    if not match:
        raise errors.TTSRefused(
            f"ANKISYNC_AZURE_TTS_VOICE {voice!r} is not an Azure voice name like"
            f" en-US-JennyNeural; pick one from {AZURE_VOICES_URL}")
    text = escape(_NOT_XML.sub(" ", text), {'"': "&quot;", "'": "&apos;"})
    # A relative rate: +20.00% is 1.2 times the voice's own speed.
    percent = f"{(rate - 1) * 100:+.2f}%"
    return ("<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis'"
            f" xml:lang={quoteattr(match.group(1))}><voice name={quoteattr(voice)}>"
            f"<prosody rate={quoteattr(percent)}>{text}</prosody></voice></speak>")


def azure_speech(text, *, region, endpoint, api_key, voice, rate, timeout):
    """MP3 audio (bytes, content type) of text from Azure Speech's REST API."""
    if not api_key:
        raise errors.TTSRefused("ANKISYNC_TTS=azure needs the Speech resource's key:"
                                " ANKISYNC_AZURE_TTS_KEY (or _FILE), or `./run.sh setup`")
    if not (region or endpoint):
        raise errors.TTSRefused("ANKISYNC_TTS=azure needs ANKISYNC_AZURE_TTS_REGION (e.g."
                                " westeurope) or ANKISYNC_AZURE_TTS_ENDPOINT")
    document = ssml(text, voice, rate).encode("utf-8")
    headers = {"Ocp-Apim-Subscription-Key": api_key,
               "Content-Type": "application/ssml+xml",
               "X-Microsoft-OutputFormat": AZURE_FORMAT,
               "User-Agent": USER_AGENT}
    where = ("ANKISYNC_AZURE_TTS_ENDPOINT", endpoint) if endpoint else (
        "ANKISYNC_AZURE_TTS_REGION", region)
    service = Service("Azure Speech", *where, "ANKISYNC_AZURE_TTS_KEY", api_key,
                      "ANKISYNC_AZURE_TTS_TIMEOUT",
                      f"ANKISYNC_AZURE_TTS_VOICE ({voice!r}) and ANKISYNC_AZURE_TTS_RATE"
                      f" ({rate:g})")
    return _post(service, azure_url(region, endpoint), document, headers, timeout)


# Who is called, and the settings a person fixes when it refuses (for messages).
Service = namedtuple("Service", "name where_setting where key_setting key timeout_setting"
                                " voice_settings")


def _redact(service, text):
    """text with the key masked, should a server ever echo it."""
    return text.replace(service.key, "[key]") if service.key else text


def _post(service, url, data, headers, timeout):
    """(body, content type) of a POST that answered 2xx; errors mapped for the job."""
    if url.startswith("http://") and service.key and not config.is_loopback(
            urllib.parse.urlsplit(url).hostname or ""):
        _warn_unencrypted(service.name, url)
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    retried = "the job will be retried"
    deadline = time.monotonic() + timeout
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            body = _read(service, answer, deadline)
            kind = answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        raise _refusal(service, error) from None
    except (TimeoutError, socket.timeout):
        raise errors.TTSUnavailable(
            f"{service.name} did not answer within {timeout:g} s ({service.timeout_setting});"
            f" {retried}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise errors.TTSUnavailable(
                f"{service.name} did not answer within {timeout:g} s"
                f" ({service.timeout_setting}); {retried}") from None
        if isinstance(reason, ssl.SSLCertVerificationError):  # a retry will not change it
            raise errors.TTSRefused(
                f"{service.name} at {service.where} has a certificate this machine does not"
                f" trust ({reason.verify_message}): give {service.where_setting} an address"
                " with a trusted certificate (or http:// for a server on this machine)") from None
        raise errors.TTSUnavailable(
            f"{service.name} at {service.where} could not be reached"
            f" ({_redact(service, str(reason))}); {retried}") from None
    except (http.client.HTTPException, ConnectionError) as error:
        raise errors.TTSUnavailable(f"{service.name} broke off its answer"
                                    f" ({type(error).__name__}); {retried}") from None
    except ValueError:  # a URL urllib cannot use
        raise errors.TTSRefused(f"{service.where_setting} {service.where!r} is not a usable"
                                " URL, like http://127.0.0.1:8880") from None
    except OSError as error:  # a TLS error mid-answer, and the like
        raise errors.TTSUnavailable(f"{service.name} failed mid-answer ({type(error).__name__});"
                                    f" {retried}") from None
    return body, kind


@functools.cache  # once per address and process, not once per clip
def _warn_unencrypted(name, url):
    log.warning("the %s key is sent unencrypted to %s", name, url)


def _read(service, answer, deadline):
    """The body, within the deadline and the size cap (a server may trickle or flood)."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = answer.read1(64 * 1024) if hasattr(answer, "read1") else answer.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_AUDIO:
            raise errors.TTSUnavailable(
                f"{service.name} sent more than {MAX_AUDIO // 2**20} MB for one clip, which no"
                f" word or sentence takes: check {service.where_setting}; the job will be retried")
        chunks.append(chunk)


def _refusal(service, error):
    """The ankisync error for an HTTP error status."""
    code = error.code
    try:
        detail = _message(error.read(4096))
    except (OSError, http.client.HTTPException):
        detail = ""
    said = f"{code}: {_redact(service, detail)}" if detail else str(code)
    retried = "the job will be retried"
    if code == 429:
        wait = error.headers.get("Retry-After")
        return tts_limit.RateLimited(  # tts_limit slows down and asks again
            f"{service.name} is rate-limiting ({said})" + (f"; it asks to wait {wait} s"
                                                           if wait else "") + f"; {retried}",
            retry_after=tts_limit.retry_after(wait))
    if code >= 500 or code == 408:
        return errors.TTSUnavailable(f"{service.name} is unavailable ({said}); {retried}")
    if code in (401, 403):
        hint = (f"check {service.key_setting} (or the key given to `./run.sh setup`)"
                if service.key else f"set {service.key_setting}: this server wants a key")
        if service.where_setting == "ANKISYNC_AZURE_TTS_REGION":
            hint += f", and that {service.where_setting} ({service.where}) is the key's region"
        return errors.TTSRefused(f"{service.name} refused the key ({said}): {hint}")
    if 300 <= code < 400:
        location = error.headers.get("Location", "?")
        return errors.TTSRefused(
            f"{service.name} answered with a redirect to {location} ({code}), which ankisync"
            f" does not follow (it would carry the key): set {service.where_setting} to the"
            " address it names")
    if code in (404, 405):
        return errors.TTSRefused(
            f"{service.name} has no speech endpoint at the address used ({said}): check"
            f" {service.where_setting} ({service.where}) and {service.voice_settings}")
    return errors.TTSRefused(
        f"{service.name} refused the request ({said}): check {service.voice_settings}")


def _message(raw):
    """The server's own words from an error body: OpenAI's, FastAPI's, Azure's, or text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return re.sub(r"\s+", " ", re.sub(r"<[^>]*>", " ", text)).strip()[:300]
    found = body
    for step in ("error", "detail"):  # {"error": {...}}, {"detail": ...} (FastAPI)
        if isinstance(found, dict) and step in found:
            found = found[step]
    if isinstance(found, list) and found and isinstance(found[0], dict):  # FastAPI's 422
        found = "; ".join(str(item.get("msg", item)) for item in found[:3])
    if isinstance(found, dict):
        found = found.get("message") or found.get("msg") or json.dumps(found)
    return str(found)[:300]
