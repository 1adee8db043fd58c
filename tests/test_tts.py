"""tts.py through the real Google client, against the local fake endpoint."""

import logging
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

import config
import errors
import tts
from fake_tts import FakeTTS  # conftest.py puts tests/ and the project on sys.path

KEY = "AIzaSy-test-key-0123456789"
VOICE = "en-US-Wavenet-D"


@pytest.fixture
def fake():
    """A fake of our own: these tests change its keys, which the shared one keeps."""
    with FakeTTS() as server:
        yield server


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)


def speak(fake, text="Hello there.", *, key=KEY, voice=VOICE, timeout=5.0):
    return tts.synthesize(text, voice=voice, api_key=key, endpoint=fake.url, timeout=timeout)


def settings(fake, tmp_path, voice=VOICE):
    return config.load({"ANKISYNC_DATA_DIR": str(tmp_path), "ANKISYNC_GOOGLE_API_KEY": KEY,
                        "ANKISYNC_GOOGLE_TTS_ENDPOINT": fake.url, "ANKISYNC_TTS_VOICE": voice,
                        "ANKISYNC_GOOGLE_TTS_TIMEOUT": "5"})


def clip(fake, media, text, *, voice=VOICE, temp_dir=None):
    current = settings(fake, media.parent, voice)
    return tts.ensure_clip(media, text, tts.voice_for("google", current), settings=current,
                           keys=tts.keys(current), temp_dir=temp_dir)


# speakable

@pytest.mark.parametrize("text, said", [
    ("He told the {{c1::extraordinary}} story.", "He told the extraordinary story."),
    ("A {{c2::word::hint}} here", "A word here"),
    ("{{c1::one}} and {{c2::two::a number}}", "one and two"),
    ("{{c1::a {{c2::nested}} cloze}}", "a nested cloze"),
    ("first<br>second<br/>third", "first second third"),
    ("<div>one</div><div>two</div><p>three</p>", "one two three"),
    ("extra<b>ordinary</b> <i>times</i>", "extraordinary times"),
    ("Tom &amp; Jerry&nbsp;&quot;run&quot; &lt;b&gt;", 'Tom & Jerry "run" <b>'),
    ("  lots \n\t of   space  ", "lots of space"),
    ("{{c1::<b>bold</b>}} answer", "bold answer"),
    ("x<style>p {color: red}</style>y<!-- note -->z", "x y z"),
    ("", ""),
])
def test_speakable(text, said):
    assert tts.speakable(text) == said


# clip_name

def test_clip_name_is_stable_and_hides_the_text():
    name = tts.clip_name("He told the {{c1::extraordinary}} story.", VOICE)
    assert name == tts.clip_name("He told the {{c1::extraordinary}} story.", VOICE)
    assert re.fullmatch(r"ankisync-[0-9a-f]{24}\.mp3", name)
    assert "extraordinary" not in name and "story" not in name


def test_clip_name_follows_what_is_said():
    name = tts.clip_name("He told the {{c1::extraordinary}} story.", VOICE)
    # Same words spoken: same clip, whatever the markup.
    assert tts.clip_name("He  told the <b>extraordinary</b>\nstory.", VOICE) == name
    assert tts.clip_name("He told the ordinary story.", VOICE) != name
    assert tts.clip_name("He told the {{c1::extraordinary}} story.", "en-GB-Wavenet-B") != name
    # Case changes how a voice reads some words (US vs us): keep it.
    assert tts.clip_name("he told the extraordinary story.", VOICE) != name


# available

def test_available(monkeypatch, tmp_path):
    assert tts.available(KEY)
    assert not tts.available(None)
    assert not tts.available("")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert not tts.available(None)
    (tmp_path / "sa.json").write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "sa.json"))
    assert tts.available(None)


# the fake's audio is a real MP3

def test_fake_audio_is_mpeg1_layer3_frames(fake):
    audio = fake.audio
    frames = 0
    offset = 0
    while offset < len(audio):
        header = int.from_bytes(audio[offset:offset + 4], "big")
        assert header >> 21 == 0x7FF, "frame sync"
        assert (header >> 19) & 0b11 == 0b11, "MPEG-1"
        assert (header >> 17) & 0b11 == 0b01, "Layer III"
        bitrate = [None, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320][
            (header >> 12) & 0xF] * 1000
        rate = [44100, 48000, 32000][(header >> 10) & 0b11]
        padding = (header >> 9) & 1
        offset += 144 * bitrate // rate + padding
        frames += 1
    assert offset == len(audio) and frames >= 5


def test_fake_audio_is_recognised_by_file(tmp_path, fake):
    if not shutil.which("file"):
        pytest.skip("no `file` command")
    path = tmp_path / "a.mp3"
    path.write_bytes(fake.audio)
    described = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout
    assert "MPEG" in described and "layer III" in described


# synthesize

def test_synthesize_returns_the_served_mp3_and_sends_the_request(fake):
    assert speak(fake, "Hello there.") == fake.audio
    [request] = fake.requests
    assert request["path"] == "/v1/text:synthesize"
    assert request["key"] == KEY
    assert request["body"] == {
        "input": {"text": "Hello there."},
        "voice": {"languageCode": "en-US", "name": VOICE},
        "audioConfig": {"audioEncoding": "MP3"},
    }


def test_language_comes_from_the_voice(fake):
    speak(fake, voice="cmn-CN-Wavenet-A")
    assert fake.requests[0]["body"]["voice"] == {"languageCode": "cmn-CN",
                                                 "name": "cmn-CN-Wavenet-A"}


def test_voice_that_is_no_voice_name_is_refused_before_calling(fake):
    with pytest.raises(errors.TTSRefused, match="ANKISYNC_TTS_VOICE"):
        speak(fake, voice="Wavenet")
    assert fake.requests == []


def test_endpoint_without_key_or_credentials_is_called_anonymously(fake):
    assert speak(fake, key=None) == fake.audio
    assert fake.requests[0]["key"] is None


def test_bad_key_is_refused_naming_the_setting_without_the_key(fake, caplog):
    caplog.set_level(logging.DEBUG)  # the client's and urllib3's logs too
    fake.valid_keys = {"another-key"}
    with pytest.raises(errors.TTSRefused) as raised:
        speak(fake)
    message = str(raised.value)
    assert "ANKISYNC_GOOGLE_API_KEY" in message
    assert "403" in message and "API key not valid" in message
    assert KEY not in message
    assert KEY not in caplog.text
    assert isinstance(raised.value, errors.PermanentError)


def test_bad_request_is_refused_naming_the_voice_setting(fake):
    fake.status = 400
    with pytest.raises(errors.TTSRefused, match="ANKISYNC_TTS_VOICE"):
        speak(fake)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_trouble_is_unavailable(fake, status):
    fake.status = status
    with pytest.raises(errors.TTSUnavailable, match=str(status)) as raised:
        speak(fake)
    assert "retried" in str(raised.value)
    assert isinstance(raised.value, errors.TransientError)


@pytest.mark.parametrize("mode", ["bad_json", "bad_base64", "html"])
def test_a_broken_200_answer_is_unavailable(fake, mode):
    fake.fail_next(1, mode)
    with pytest.raises(errors.TTSUnavailable, match="retried"):
        speak(fake)
    assert speak(fake) == fake.audio


def test_a_held_answer_comes_when_released(fake):
    import threading
    fake.hold()
    answers = []
    thread = threading.Thread(target=lambda: answers.append(speak(fake)))
    thread.start()
    fake.wait_held()
    assert answers == [] and len(fake.requests) == 1
    fake.release()
    thread.join(10)
    assert answers == [fake.audio]


def test_failures_pass_and_the_next_call_succeeds(fake):
    fake.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(errors.TTSUnavailable):
            speak(fake)
    assert speak(fake) == fake.audio
    assert len(fake.requests) == 3


def test_slow_server_times_out_quickly(fake):
    fake.hold()  # no answer until the client has given up
    started = time.monotonic()
    with pytest.raises(errors.TTSUnavailable, match="in time"):
        speak(fake, timeout=0.3)
    assert time.monotonic() - started < 2.5
    fake.release()


def test_unreachable_endpoint_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens
    with pytest.raises(errors.TTSUnavailable, match="could not be reached"):
        tts.synthesize("hi", voice=VOICE, api_key=KEY, endpoint="http://127.0.0.1:%d" % port,
                       timeout=2.0)


# ensure_clip

def test_ensure_clip_synthesizes_once_and_reuses_the_file(fake, tmp_path):
    media = tmp_path / "collection.media"  # missing: ensure_clip makes it
    text = "He told the {{c1::extraordinary}} story."
    name = clip(fake, media, text)
    assert name == tts.clip_name(text, VOICE)
    assert (media / name).read_bytes() == fake.audio
    assert clip(fake, media, text) == name
    assert len(fake.requests) == 1
    assert fake.requests[0]["body"]["input"]["text"] == "He told the extraordinary story."
    assert [p.name for p in media.iterdir()] == [name]  # no temp file left behind


def test_ensure_clip_for_another_voice_is_another_file(fake, tmp_path):
    us = clip(fake, tmp_path, "story")
    gb = clip(fake, tmp_path, "story", voice="en-GB-Wavenet-B")
    assert us != gb
    assert len(fake.requests) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([us, gb])


def test_ensure_clip_replaces_an_empty_file(fake, tmp_path):
    name = tts.clip_name("story", VOICE)
    (tmp_path / name).write_bytes(b"")  # what a crash mid-write elsewhere could leave
    assert clip(fake, tmp_path, "story") == name
    assert (tmp_path / name).read_bytes() == fake.audio


def test_failed_clip_leaves_nothing_so_a_retry_calls_again(fake, tmp_path):
    fake.fail_next(1, 503)
    with pytest.raises(errors.TTSUnavailable):
        clip(fake, tmp_path, "story")
    assert list(tmp_path.iterdir()) == []
    assert clip(fake, tmp_path, "story") == tts.clip_name("story", VOICE)
    assert len(fake.requests) == 2


def test_clips_are_written_through_the_temporary_folder(fake, tmp_path):
    media, scratch = tmp_path / "collection.media", tmp_path / "tmp"
    name = clip(fake, media, "story", temp_dir=scratch)
    assert [p.name for p in media.iterdir()] == [name] and list(scratch.iterdir()) == []


def test_half_written_clips_are_cleaned(tmp_path):
    media, scratch = tmp_path / "collection.media", tmp_path / "tmp"
    media.mkdir()
    scratch.mkdir()
    for folder in (media, scratch):
        (folder / ".ankisync-x1y2.tmp").write_bytes(b"half")
    (media / "ankisync-kept.mp3").write_bytes(b"whole")
    assert tts.clean_temporaries(media, scratch) == 2
    assert [p.name for p in media.iterdir()] == ["ankisync-kept.mp3"]
    assert list(scratch.iterdir()) == []


def test_nothing_to_say_is_a_bad_note(fake, tmp_path):
    with pytest.raises(errors.BadNote):
        clip(fake, tmp_path, "<br> {{c1::}} &nbsp;")
    assert fake.requests == []


def test_auto_picks_google_with_a_key_else_espeak_when_installed(monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    assert tts.choose("auto", "a-key") == "google"
    assert tts.choose("auto", None) == ("espeak" if shutil.which("espeak-ng") else None)
    assert tts.choose("none", "a-key") is None
    assert tts.choose("espeak", "a-key") == "espeak"


@pytest.mark.skipif(not shutil.which("espeak-ng") and not os.environ.get("CI"),
                    reason="espeak-ng is not installed (CI installs it)")
def test_espeak_speaks_wav_offline(tmp_path):
    audio = tts.synthesize_espeak("--version is not an option here", voice="en-us", timeout=20)
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE" and len(audio) > 10_000
    current = config.load({"ANKISYNC_DATA_DIR": str(tmp_path), "ANKISYNC_ESPEAK_TIMEOUT": "20"})
    name = tts.ensure_clip(tmp_path, "He told the {{c1::tale}}.", tts.Voice("espeak", "en-us"),
                           settings=current, keys=tts.keys(current))
    assert name.endswith(".wav") and name != tts.clip_name("He told the tale.", "en-us")
    assert (tmp_path / name).read_bytes()[:4] == b"RIFF"
