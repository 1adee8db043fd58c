"""A card's options over REST: its deck, tags, voice, speaking rate and word recording.

All optional: a card without them goes where ANKISYNC_DECK says, untagged, in the
configured voice. The web process checks them here and stores them with the job
(in its request); the worker reads them from there. The patterns serve both the
server's checks and the OpenAPI document (openapi.py), so a client and the
server judge a card alike.
"""

import math
import re
import urllib.parse

import errors

OPTIONS = ("deck", "tags", "voice", "speakingRate", "wordAudioUrl")
DECK_LONGEST = 200
TAG_LONGEST = 100
MOST_TAGS = 20
VOICE_LONGEST = 100
URL_LONGEST = 2000
RATES = (0.25, 4.0)
# Control characters (Unicode Cc) and what Python's str.isspace() calls space, spelled
# out so that a pattern means the same in Python and ECMA-262 (the OpenAPI document).
CONTROL = r"\x00-\x1f\x7f-\x9f"
SPACE = r"\t-\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Anki's "::" makes sub-decks; it turns an empty part into "blank" and trims the others.
DECK_PATTERN = rf"^[^{CONTROL}]*[^{CONTROL}{SPACE}][^{CONTROL}]*$"
# Anki splits tags at spaces: one tag holds none ("::" makes a tag hierarchy here too).
TAG_PATTERN = rf"^[^{CONTROL}{SPACE}]+$"
# Never starting like an option (espeak-ng takes it as an argument) or with a space.
VOICE_PATTERN = rf"^[^{CONTROL}{SPACE}-][^{CONTROL}]*$"
EXAMPLE_URL = "https://dictionary.cambridge.org/media/english/us_pron/e/ext/extra/extraordinary.mp3"


def _host_pattern(host, port):
    escaped = host.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")
    return escaped + (f":{port}" if port else "")


def url_pattern(hosts):
    """The wordAudioUrls that ANKISYNC_AUDIO_URL_HOSTS allows: http(s), a host as listed
    (lower case; an explicit port only where listed), then a path of printable ASCII."""
    if not hosts:
        return r"^(?!)$"  # none
    listed = "|".join(_host_pattern(host, port) for host, port in hosts)
    return rf"^https?://(?:{listed})(?:/[!-~]*)?$"


def allowed_url(url, hosts):
    """Whether url is a wordAudioUrl the hosts allow (each redirect is checked with it too)."""
    return isinstance(url, str) and re.fullmatch(url_pattern(hosts), url) is not None


def listed(hosts):
    """The hosts as a person writes them, for messages."""
    return ", ".join(host + (f":{port}" if port else "") for host, port in hosts) or "empty"


def _url_problem(url, hosts):
    """Why a wordAudioUrl is refused, in words."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, like {EXAMPLE_URL}"
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    where = host + (f":{port}" if port else "")
    if parts.username is not None or not any(
            (host, port) == entry for entry in hosts):
        return (f"is on {where}, which is not in ANKISYNC_AUDIO_URL_HOSTS ({listed(hosts)}):"
                " send a recording from a listed host, or add the host to"
                " ANKISYNC_AUDIO_URL_HOSTS in data/.env and restart (./run.sh)")
    return ("must be a plain URL of printable ASCII characters, with no spaces or user"
            f" name, like {EXAMPLE_URL}")


def check(data, hosts):
    """(options, problems): the options data holds, cleaned; field name -> why it is refused.

    A missing or null option is left out (the worker then uses the settings).
    hosts: ANKISYNC_AUDIO_URL_HOSTS.
    """
    options, problems = {}, {}
    given = {name: data[name] for name in OPTIONS if data.get(name) is not None}
    deck = given.get("deck")
    if deck is not None:
        if not isinstance(deck, str):
            problems["deck"] = 'must be a deck name (a string), like "English::Cambridge"'
        elif len(deck) > DECK_LONGEST:
            problems["deck"] = f"is too long: at most {DECK_LONGEST} characters"
        elif not re.fullmatch(DECK_PATTERN, deck):
            problems["deck"] = ("must be a deck name with no control characters (tabs, line"
                                ' breaks), not empty, like "English::Cambridge"')
        else:
            options["deck"] = deck
    tags = given.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            problems["tags"] = 'must be a list of strings, like ["cambridge", "B2"]'
        elif len(tags) > MOST_TAGS:
            problems["tags"] = f"holds {len(tags)} tags: at most {MOST_TAGS}"
        elif any(len(tag) > TAG_LONGEST for tag in tags):
            problems["tags"] = f"holds a tag that is too long: at most {TAG_LONGEST} characters"
        elif not all(re.fullmatch(TAG_PATTERN, tag) for tag in tags):
            problems["tags"] = ("holds an empty tag, or one with a space or control character:"
                                " Anki separates tags by spaces (write multi_word or"
                                " English::B2)")
        else:
            options["tags"] = tags
    voice = given.get("voice")
    if voice is not None:
        if not isinstance(voice, str) or len(voice) > VOICE_LONGEST or not re.fullmatch(
                VOICE_PATTERN, voice):
            problems["voice"] = (f"must be a voice name of the configured voice provider (at"
                                 f" most {VOICE_LONGEST} characters, not starting with - or a"
                                 " space), like en-US-Wavenet-D for Google or alloy for OpenAI")
        else:
            options["voice"] = voice
    rate = given.get("speakingRate")
    if rate is not None:
        low, high = RATES
        if (isinstance(rate, bool) or not isinstance(rate, (int, float))
                or not math.isfinite(rate) or not low <= rate <= high):
            problems["speakingRate"] = (f"must be a number from {low:g} to {high:g} (1.0: the"
                                        " voice's own speed)")
        else:
            options["speakingRate"] = float(rate)
    url = given.get("wordAudioUrl")
    if url is not None:
        if not isinstance(url, str):
            problems["wordAudioUrl"] = f"must be a URL (a string), like {EXAMPLE_URL}"
        elif len(url) > URL_LONGEST:
            problems["wordAudioUrl"] = f"is too long: at most {URL_LONGEST} characters"
        elif not allowed_url(url, hosts):
            problems["wordAudioUrl"] = _url_problem(url, hosts)
        else:
            options["wordAudioUrl"] = url
    return options, problems


def voice_for_card(voice, card):
    """The voice (a tts.Voice) a card is spoken in: the configured one, with the card's
    voice name and speaking rate where it gives them."""
    if card.get("voice"):
        voice = voice._replace(name=card["voice"])
    if card.get("speakingRate") is not None:
        voice = voice._replace(rate=float(card["speakingRate"]))
    return voice


def blame(error, card):
    """A provider's refusal of a card that chose its voice or rate, naming those fields."""
    chosen = [f"{name} {card[name]!r}" for name in ("voice", "speakingRate")
              if card.get(name) is not None]
    if not chosen or not isinstance(error, errors.TTSRefused):
        return error
    return errors.TTSRefused(
        f"this card asked for {' and '.join(chosen)}, which may be what was refused: send a"
        " voice and rate the configured provider knows, or leave voice and speakingRate out"
        f" for the settings'. The provider's answer: {error}")
