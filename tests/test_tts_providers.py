"""The speech providers: OpenAI-compatible servers and Azure Speech against local fakes of
their real HTTP APIs, Google's rate and pitch, the clip cache key; then each provider end
to end (a card through REST to a fresh collection), refusals, setup's check,
and a job keeping its voice when the provider changes."""

import json
import time

import pytest

import config
import errors
import tts
import tts_rest
from anki_server import download_collection, media_files, notes_in
from conftest import GOOGLE_KEY
from fake_speech import SILENT_WAV, FakeAzure, FakeOpenAI
from fake_tts import SILENT_MP3
from helpers import card, wait_for_log
from service import Service

OPENAI_KEY = "sk-test-0123456789abcdef"
AZURE_KEY = "0123456789abcdef0123456789abcdef"
# a card's HTML: what is said holds < & > " ' (which SSML must escape)
TRICKY = """Tom said "5 &lt; 6 &amp; 7 &gt; 3" isn't it's <b>x</b>"""


@pytest.fixture(scope="module")
def _openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def _azure():
    with FakeAzure() as fake:
        yield fake


@pytest.fixture
def openai(_openai):
    _openai.reset()
    _openai.valid_keys, _openai.voices = {OPENAI_KEY}, {"alloy", "af_heart"}
    return _openai


@pytest.fixture
def azure(_azure):
    _azure.reset()
    _azure.valid_keys, _azure.voices = {AZURE_KEY}, {"en-US-JennyNeural", "en-GB-RyanNeural"}
    return _azure


def settings_for(tmp_path, **values):
    environ = {"ANKISYNC_DATA_DIR": str(tmp_path), **{k: str(v) for k, v in values.items()}}
    return config.load(environ)


def openai_settings(tmp_path, fake, **values):
    return settings_for(tmp_path, **{
        "ANKISYNC_TTS": "openai", "ANKISYNC_OPENAI_TTS_BASE_URL": fake.url,
        "ANKISYNC_OPENAI_TTS_API_KEY": OPENAI_KEY, "ANKISYNC_OPENAI_TTS_TIMEOUT": 5, **values})


def azure_settings(tmp_path, fake, **values):
    return settings_for(tmp_path, **{
        "ANKISYNC_TTS": "azure", "ANKISYNC_AZURE_TTS_ENDPOINT": fake.url,
        "ANKISYNC_AZURE_TTS_KEY": AZURE_KEY, "ANKISYNC_AZURE_TTS_TIMEOUT": 5, **values})


def clip(settings, text="Hello there.", media=None):
    """Speak text with the settings' provider into a media folder; the clip's name."""
    provider = tts.choose(settings.tts, None)
    media = media or settings.data_dir / "collection.media"
    return tts.ensure_clip(media, text, tts.voice_for(provider, settings), settings=settings,
                           keys=tts.keys(settings))


# OpenAI-compatible

def test_openai_request_is_what_the_api_documents(openai, tmp_path):
    settings = openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_SPEED="1.25",
                               ANKISYNC_OPENAI_TTS_MODEL="kokoro",
                               ANKISYNC_OPENAI_TTS_VOICE="af_heart")
    name = clip(settings, "He told the {{c1::extraordinary}} story.")
    assert name.endswith(".mp3")
    assert (settings.data_dir / "collection.media" / name).read_bytes() == SILENT_MP3
    [request] = openai.requests
    assert request["method"] == "POST" and request["path"] == "/v1/audio/speech"
    assert request["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["user-agent"] == "ankisync"  # Python-urllib is blocked by some
    assert request["body"] == {"model": "kokoro", "input": "He told the extraordinary story.",
                               "voice": "af_heart", "response_format": "mp3", "speed": 1.25}


def test_openai_base_url_may_end_in_v1_and_a_local_server_gets_no_key(openai, tmp_path):
    openai.valid_keys = None  # Kokoro-FastAPI and openedai-speech check none
    settings = settings_for(tmp_path, ANKISYNC_TTS="openai",
                            ANKISYNC_OPENAI_TTS_BASE_URL=openai.url + "/v1/")
    assert clip(settings).endswith(".mp3")
    [request] = openai.requests
    assert request["path"] == "/v1/audio/speech" and "authorization" not in request["headers"]
    assert "speed" not in request["body"]  # the default is not sent


def test_openai_streamed_answer_is_stored_whole(openai, tmp_path):
    openai.answer_as = "chunked"  # Kokoro-FastAPI streams unless told not to
    settings = openai_settings(tmp_path, openai)
    assert (settings.data_dir / "collection.media" / clip(settings)).read_bytes() == SILENT_MP3


def test_keys_may_come_from_files(tmp_path):
    (tmp_path / "openai.key").write_text(OPENAI_KEY + "\n")
    (tmp_path / "azure.key").write_text(AZURE_KEY + "\n")
    settings = settings_for(tmp_path, ANKISYNC_OPENAI_TTS_API_KEY_FILE=tmp_path / "openai.key",
                            ANKISYNC_AZURE_TTS_KEY_FILE=tmp_path / "azure.key")
    assert tts.keys(settings) == {"google": None, "openai": OPENAI_KEY, "azure": AZURE_KEY}


def test_openai_answering_wav_is_stored_as_wav(openai, tmp_path):
    openai.answer_as = "wav"  # LocalAI's backends answer WAV whatever was asked
    settings = openai_settings(tmp_path, openai)
    name = clip(settings)
    assert name.endswith(".wav")
    assert (settings.data_dir / "collection.media" / name).read_bytes() == SILENT_WAV
    assert clip(settings) == name and len(openai.requests) == 1  # found again as .wav


def test_openai_200_that_is_not_audio_is_retried(openai, tmp_path):
    openai.answer_as = "json"
    with pytest.raises(errors.TTSUnavailable, match="not audio.*ANKISYNC_OPENAI_TTS_BASE_URL"):
        clip(openai_settings(tmp_path, openai))
    assert not (tmp_path / "collection.media").exists() or not any(
        (tmp_path / "collection.media").iterdir())


@pytest.mark.parametrize("given", [None, "sk-wrong-key-0000000000"])
def test_openai_key_refused_names_the_setting_not_the_key(openai, tmp_path, given):
    settings = openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_API_KEY=given or "")
    with pytest.raises(errors.TTSRefused) as raised:
        clip(settings)
    message = str(raised.value)
    assert "401" in message and "ANKISYNC_OPENAI_TTS_API_KEY" in message
    assert isinstance(raised.value, errors.PermanentError)
    if given:
        assert given not in message and "Incorrect API key" in message


@pytest.mark.parametrize("status", [401, 403])
def test_a_key_refused_is_permanent_for_both(openai, azure, tmp_path, status):
    openai.fail_next(1, status)
    azure.fail_next(1, status)
    with pytest.raises(errors.TTSRefused, match=f"{status}.*ANKISYNC_OPENAI_TTS_API_KEY"):
        clip(openai_settings(tmp_path, openai))
    with pytest.raises(errors.TTSRefused, match=f"{status}.*ANKISYNC_AZURE_TTS_KEY"):
        clip(azure_settings(tmp_path, azure))


@pytest.mark.parametrize("mode, timeout, said", [("flood", 20, "sent more than 20 MB"),
                                                 ("trickle", 1.5, "did not answer within 1.5 s")])
def test_an_endless_answer_is_cut_off(openai, tmp_path, mode, timeout, said):
    openai.answer_as = mode
    settings = openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_TIMEOUT=timeout)
    started = time.monotonic()
    with pytest.raises(errors.TTSUnavailable, match=said):
        clip(settings)
    if mode == "trickle":  # each read gets a byte in time: the whole answer's deadline ends it
        assert time.monotonic() - started < 5
    assert not (tmp_path / "collection.media").exists()


def test_openai_unknown_voice_names_the_voice_setting(openai, tmp_path):
    settings = openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_VOICE="nobody")
    with pytest.raises(errors.TTSRefused, match="400.*'voice'.*ANKISYNC_OPENAI_TTS_VOICE"):
        clip(settings)


def test_openai_wrong_path_names_the_base_url(openai, tmp_path):
    settings = openai_settings(tmp_path, openai,
                               ANKISYNC_OPENAI_TTS_BASE_URL=openai.url + "/api/tts")
    with pytest.raises(errors.TTSRefused, match="404.*ANKISYNC_OPENAI_TTS_BASE_URL"):
        clip(settings)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_openai_busy_or_broken_is_retried(openai, tmp_path, status):
    openai.fail_next(1, status, retry_after=7 if status == 429 else None)
    settings = openai_settings(tmp_path, openai)
    with pytest.raises(errors.TTSUnavailable, match=str(status)) as raised:
        clip(settings)
    assert "retried" in str(raised.value)
    if status == 429:
        assert "wait 7 s" in str(raised.value)
    assert clip(settings).endswith(".mp3")  # and the next try works


def test_openai_hang_times_out_within_its_setting(openai, tmp_path):
    openai.hold()
    settings = openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_TIMEOUT="0.5")
    started = time.monotonic()
    with pytest.raises(errors.TTSUnavailable, match="ANKISYNC_OPENAI_TTS_TIMEOUT"):
        clip(settings)
    assert time.monotonic() - started < 3
    openai.release()


def test_a_redirect_is_not_followed_with_the_key(openai, tmp_path):
    with FakeOpenAI() as elsewhere:
        openai.redirect_to = elsewhere.url + "/v1/audio/speech"
        openai.fail_next(1, 307)
        with pytest.raises(errors.TTSRefused, match="redirect.*ANKISYNC_OPENAI_TTS_BASE_URL"):
            clip(openai_settings(tmp_path, openai))
        assert elsewhere.requests == []


def self_signed(folder):
    """(certificate, key) files of a self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_an_untrusted_certificate_is_refused_not_retried(tmp_path):
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed(tmp_path))
    with FakeOpenAI() as fake:
        fake._server.socket = context.wrap_socket(fake._server.socket, server_side=True)
        settings = settings_for(tmp_path, ANKISYNC_TTS="openai", ANKISYNC_OPENAI_TTS_TIMEOUT=5,
                                ANKISYNC_OPENAI_TTS_BASE_URL=fake.url.replace("http:", "https:"))
        with pytest.raises(errors.TTSRefused, match="certificate.*ANKISYNC_OPENAI_TTS_BASE_URL"):
            clip(settings)
        assert fake.requests == []


def test_nothing_listening_is_retried(tmp_path):
    from anki_server import free_port
    settings = settings_for(tmp_path, ANKISYNC_TTS="openai",
                            ANKISYNC_OPENAI_TTS_BASE_URL=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.TTSUnavailable, match="could not be reached"):
        clip(settings)


# Azure

def test_azure_request_is_what_the_api_documents(azure, tmp_path):
    settings = azure_settings(tmp_path, azure, ANKISYNC_AZURE_TTS_RATE="1.2",
                              ANKISYNC_AZURE_TTS_VOICE="en-GB-RyanNeural")
    name = clip(settings, TRICKY)
    assert name.endswith(".mp3")
    [request] = azure.requests
    headers = request["headers"]
    assert request["method"] == "POST" and request["path"] == "/cognitiveservices/v1"
    assert headers["ocp-apim-subscription-key"] == AZURE_KEY
    assert headers["content-type"] == "application/ssml+xml"
    assert headers["x-microsoft-outputformat"] == "audio-24khz-48kbitrate-mono-mp3"
    assert headers["user-agent"] == "ankisync"
    # the fake parsed the SSML: well-formed, the sentence exactly as said, escaped
    assert request["text"] == tts.speakable(TRICKY) == """Tom said "5 < 6 & 7 > 3" isn't it's x"""
    assert request["voice"] == "en-GB-RyanNeural" and request["language"] == "en-GB"
    assert request["rate"] == "+20.00%"
    assert b"&lt; 6 &amp; 7 &gt; 3" in request["raw"]


def test_ssml_cannot_be_broken_out_of():
    document = tts_rest.ssml("</prosody></voice><voice name='x'>\x00hi", "en-US-JennyNeural", 1)
    import xml.etree.ElementTree as ET
    root = ET.fromstring(document)
    assert len(root) == 1 and "".join(root.itertext()) == "</prosody></voice><voice name='x'> hi"


def test_azure_region_makes_the_regional_url():
    assert tts_rest.azure_url("westeurope", None) == (
        "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1")
    assert tts_rest.azure_url(None, "http://127.0.0.1:9/") == (
        "http://127.0.0.1:9/cognitiveservices/v1")
    custom = "https://westeurope.voice.speech.microsoft.com/cognitiveservices/v1?deploymentId=x"
    assert tts_rest.azure_url("westeurope", custom) == custom


def test_azure_region_that_could_name_another_host_is_refused(tmp_path):
    with pytest.raises(errors.ConfigError, match="ANKISYNC_AZURE_TTS_REGION"):
        settings_for(tmp_path, ANKISYNC_AZURE_TTS_REGION="evil.example#")


def test_azure_key_refused_names_key_and_region(azure, tmp_path):
    settings = settings_for(tmp_path, ANKISYNC_TTS="azure", ANKISYNC_AZURE_TTS_REGION="westeurope",
                            ANKISYNC_AZURE_TTS_ENDPOINT=azure.url, ANKISYNC_AZURE_TTS_KEY="wrong")
    with pytest.raises(errors.TTSRefused, match="401.*ANKISYNC_AZURE_TTS_KEY") as raised:
        clip(settings)
    assert "wrong" not in str(raised.value).replace("wrong API endpoint", "")


def test_azure_voice_that_is_no_voice_name_is_refused_before_calling(azure, tmp_path):
    with pytest.raises(errors.TTSRefused, match="ANKISYNC_AZURE_TTS_VOICE"):
        clip(azure_settings(tmp_path, azure, ANKISYNC_AZURE_TTS_VOICE="Jenny"))
    assert azure.requests == []


@pytest.mark.parametrize("status", [429, 500, 503])
def test_azure_busy_or_broken_is_retried(azure, tmp_path, status):
    azure.fail_next(1, status, retry_after=3 if status == 429 else None)
    settings = azure_settings(tmp_path, azure)
    with pytest.raises(errors.TTSUnavailable, match=str(status)):
        clip(settings)
    assert clip(settings).endswith(".mp3")


def test_azure_hang_times_out_within_its_setting(azure, tmp_path):
    azure.hold()
    settings = azure_settings(tmp_path, azure, ANKISYNC_AZURE_TTS_TIMEOUT="0.5")
    started = time.monotonic()
    with pytest.raises(errors.TTSUnavailable, match="ANKISYNC_AZURE_TTS_TIMEOUT"):
        clip(settings)
    assert time.monotonic() - started < 3
    azure.release()


# Google's rate and pitch; the cache key

def test_google_rate_and_pitch_are_sent(fake_tts, tmp_path):
    settings = settings_for(tmp_path, ANKISYNC_TTS="google", ANKISYNC_GOOGLE_API_KEY=GOOGLE_KEY,
                            ANKISYNC_GOOGLE_TTS_ENDPOINT=fake_tts.url,
                            ANKISYNC_GOOGLE_TTS_SPEAKING_RATE="0.8",
                            ANKISYNC_GOOGLE_TTS_PITCH="-2.5")
    clip(settings)
    assert fake_tts.requests[0]["body"]["audioConfig"] == {
        "audioEncoding": "MP3", "speakingRate": 0.8, "pitch": -2.5}


@pytest.mark.parametrize("name, value", [("ANKISYNC_GOOGLE_TTS_SPEAKING_RATE", "5"),
                                         ("ANKISYNC_OPENAI_TTS_SPEED", "0.1"),
                                         ("ANKISYNC_AZURE_TTS_RATE", "3"),
                                         ("ANKISYNC_GOOGLE_TTS_PITCH", "fast")])
def test_rates_out_of_range_stop_the_start(tmp_path, name, value):
    with pytest.raises(errors.ConfigError, match=f"{name}='{value}' from environment"):
        settings_for(tmp_path, **{name: value})


def test_openai_or_azure_without_an_address_stops_the_start(tmp_path):
    with pytest.raises(errors.ConfigError, match="ANKISYNC_OPENAI_TTS_BASE_URL"):
        settings_for(tmp_path, ANKISYNC_TTS="openai")
    with pytest.raises(errors.ConfigError, match="ANKISYNC_AZURE_TTS_REGION"):
        settings_for(tmp_path, ANKISYNC_TTS="azure")


def test_clip_names_follow_provider_voice_rate_and_model():
    text = "story"
    base = tts.Voice("openai", "alloy", 1.0, model="tts-1")
    names = {tts.clip_name(text, voice) for voice in (
        base, base._replace(name="nova"), base._replace(rate=1.5), base._replace(model="kokoro"),
        tts.Voice("azure", "alloy"), tts.Voice("google", "alloy"),
        tts.Voice("google", "alloy", pitch=2.0))}
    assert len(names) == 7
    # clips made before rate and pitch existed keep their names (and are reused)
    import hashlib
    old = hashlib.sha256(json.dumps(["google", "en-US-Wavenet-D", "mp3", text]).encode())
    assert tts.clip_name(text, tts.Voice("google", "en-US-Wavenet-D")) == (
        f"ankisync-{old.hexdigest()[:24]}.mp3")


def test_a_clip_of_one_voice_is_not_served_for_another(openai, tmp_path):
    clip(openai_settings(tmp_path, openai))
    clip(openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_SPEED="1.5"))
    clip(openai_settings(tmp_path, openai, ANKISYNC_OPENAI_TTS_VOICE="af_heart"))
    clip(openai_settings(tmp_path, openai))  # the first again: from the cache
    assert [r["body"].get("speed", 1.0) for r in openai.requests] == [1.0, 1.5, 1.0]
    assert len(list((tmp_path / "collection.media").iterdir())) == 3


# End to end: run.sh, the worker, the sync server, a fresh second collection

def provider_settings(provider, openai, azure):
    if provider == "openai":
        return {"ANKISYNC_TTS": "openai", "ANKISYNC_OPENAI_TTS_BASE_URL": openai.url,
                "ANKISYNC_OPENAI_TTS_API_KEY": OPENAI_KEY}
    return {"ANKISYNC_TTS": "azure", "ANKISYNC_AZURE_TTS_ENDPOINT": azure.url,
            "ANKISYNC_AZURE_TTS_KEY": AZURE_KEY}


def notes_and_media(tmp_path, sync_server, account):
    col = download_collection(tmp_path / f"device-{time.monotonic_ns()}", sync_server.url,
                              account, "pass")
    try:
        return notes_in(col), media_files(col)
    finally:
        col.close()


@pytest.mark.parametrize("provider, answer, extension", [
    ("openai", "mp3", ".mp3"), ("openai", "wav", ".wav"), ("azure", "mp3", ".mp3")])
def test_a_card_spoken_by_each_provider_reaches_a_fresh_collection(
        make_service, sync_server, account, openai, azure, fake_tts, tmp_path, provider, answer,
        extension):
    fake = openai if provider == "openai" else azure
    fake.answer_as = answer  # "wav": as LocalAI answers
    service = make_service(**provider_settings(provider, openai, azure))
    service.sync_login(account)
    sent = card(1, word="odd")
    sent["englishExample"] = """She said "5 &lt; 6 &amp; 7" isn't {{c1::odd}}."""
    job, _ = service.wait(service.post_card(sent)[1]["taskId"])
    assert job["status"] == "success" and job["result"]["synced"], job
    clips = job["result"]["audio"]
    assert clips["word"].endswith(extension) and clips["text"].endswith(extension), clips
    [note], media = notes_and_media(tmp_path, sync_server, account)
    assert note["fields"]["DefinitionAudio"] == f"[sound:{clips['word']}]"
    assert note["fields"]["TextAudio"] == f"[sound:{clips['text']}]"
    assert set(clips.values()) <= media
    assert sorted(fake.spoken()) == ["She said \"5 < 6 & 7\" isn't odd.", "odd"]
    assert fake_tts.requests == []  # Google was set up too, but not chosen
    for request in fake.requests:
        if provider == "openai":
            assert request["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
            assert request["body"]["voice"] == "alloy" and request["body"]["model"] == "tts-1"
        else:
            assert request["headers"]["ocp-apim-subscription-key"] == AZURE_KEY
            assert request["voice"] == "en-US-JennyNeural" and request["language"] == "en-US"
    assert f"text-to-speech {provider}" in service.logs()
    health = service.call("GET", "/api/v1/health")[2]  # what the status page shows
    assert health["tts"] == provider
    assert health["voice"] == ("alloy" if provider == "openai" else "en-US-JennyNeural")


@pytest.mark.parametrize("provider, setting", [("openai", "ANKISYNC_OPENAI_TTS_API_KEY"),
                                               ("azure", "ANKISYNC_AZURE_TTS_KEY")])
def test_a_refused_key_fails_the_job_for_good_naming_the_setting(
        make_service, openai, azure, provider, setting):
    fake = openai if provider == "openai" else azure
    fake.valid_keys = {"someone-elses-key"}
    service = make_service(**provider_settings(provider, openai, azure))
    job, seen = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "failure" and job["attempts"] == 1 and "retrying" not in seen, job
    assert job["error"]["type"] == "TTSRefused" and "401" in job["error"]["message"]
    assert setting in job["error"]["message"]
    assert OPENAI_KEY not in job["error"]["message"] and AZURE_KEY not in job["error"]["message"]
    assert fake.requests and fake.spoken() == []


def test_a_hung_server_is_timed_out_and_retried(make_service, openai, azure):
    openai.hold()
    service = make_service(**provider_settings("openai", openai, azure),
                           ANKISYNC_OPENAI_TTS_TIMEOUT="1")
    task_id = service.post_card()[1]["taskId"]
    job, _ = service.wait(task_id, until=("retrying",))
    assert "did not answer within 1 s (ANKISYNC_OPENAI_TTS_TIMEOUT)" in job["error"]["message"]
    openai.release()
    job, _ = service.wait(task_id)
    assert job["status"] == "success", job


def test_setup_checks_openai_and_azure_on_the_spot(tmp_path, openai, azure):
    service = Service(tmp_path / "data", ANKISYNC_GOOGLE_API_KEY=None)
    key_file = tmp_path / "openai.key"
    key_file.write_text(OPENAI_KEY + "\n")
    result = service.cli("setup", "--tts", "openai", "--openai-base-url", openai.url,
                         "--openai-key-file", str(key_file), "--voice", "af_heart")
    assert result.returncode == 0, result.stderr
    assert [(r["text"], r["body"]["voice"]) for r in openai.requests] == [("ankisync", "af_heart")]
    env = (service.data_dir / ".env").read_text()
    assert "ANKISYNC_TTS=openai" in env and f"ANKISYNC_OPENAI_TTS_BASE_URL={openai.url}" in env
    assert "ANKISYNC_OPENAI_TTS_VOICE=af_heart" in env and OPENAI_KEY not in env
    stored = json.loads((service.data_dir / "credentials.json").read_text())
    assert stored["openai_tts_api_key"] == OPENAI_KEY

    # a refused key: said, naming the setting, and nothing kept
    result = service.cli("setup", "--tts", "azure", "--azure-endpoint", azure.url,
                         "--azure-key-file", "-", stdin="not-the-key\n")
    assert result.returncode == 1 and "ANKISYNC_AZURE_TTS_KEY" in result.stderr
    assert "refused the key" in result.stderr and "not-the-key" not in result.stderr
    assert "Traceback" not in result.stderr
    assert (service.data_dir / ".env").read_text() == env
    assert "azure_tts_key" not in json.loads((service.data_dir / "credentials.json").read_text())

    # an address where nothing speaks: said too
    result = service.cli("setup", "--tts", "openai", "--openai-base-url", azure.url)
    assert result.returncode == 1 and "ANKISYNC_OPENAI_TTS_BASE_URL" in result.stderr

    result = service.cli("setup", "--tts", "azure", "--azure-endpoint", azure.url,
                         "--azure-key-file", "-", stdin=AZURE_KEY + "\n")
    assert result.returncode == 0, result.stderr
    assert azure.spoken() == ["ankisync"]
    env = (service.data_dir / ".env").read_text()
    assert "ANKISYNC_TTS=azure" in env and f"ANKISYNC_AZURE_TTS_ENDPOINT={azure.url}" in env

    # the service speaks with what setup kept (the key from credentials.json)
    service.api_key = None
    result = service.cli("api-key")
    service.api_key = result.stdout.strip()
    service.start()
    try:
        job, _ = service.wait(service.post_card()[1]["taskId"])
        assert job["status"] == "success" and job["result"]["audio"]["word"].endswith(".mp3"), job
        assert len(azure.spoken()) == 3
        assert all(r["headers"]["ocp-apim-subscription-key"] == AZURE_KEY
                   for r in azure.requests[-2:])
    finally:
        service.kill()


@pytest.mark.slow
@pytest.mark.parametrize("openai_kept", [True, False])
def test_a_job_keeps_its_voice_while_its_provider_is_set_up(
        make_service, sync_server, account, openai, azure, tmp_path, openai_kept):
    from anki.collection import Collection
    service = make_service(**provider_settings("openai", openai, azure))
    service.sync_login(account)
    wait_for_log(service, "synced (")
    service.stop()
    other = Collection(str(service.data_dir / "collection.anki2"))  # spoken, then not added
    try:
        service.start()
        task_id = service.post_card()[1]["taskId"]
        service.wait(task_id, until=("retrying",))
        assert service.stop() == 0
    finally:
        other.close()
    assert len(openai.spoken()) == 2
    service.env.update(provider_settings("azure", openai, azure))
    if not openai_kept:
        del service.env["ANKISYNC_OPENAI_TTS_BASE_URL"]
    service.start()
    job, _ = service.wait(task_id)
    assert job["status"] == "success" and job["result"]["synced"], job
    clips = job["result"]["audio"]
    if openai_kept:  # the clips made under openai are the note's: nothing said again
        assert len(openai.spoken()) == 2 and azure.requests == []
        assert clips["word"] == tts.clip_name("extraordinary", tts.Voice(
            "openai", "alloy", model="tts-1"))
    else:  # its provider is gone: today's voice says it
        assert len(openai.spoken()) == 2 and len(azure.spoken()) == 2
        assert clips["word"] == tts.clip_name("extraordinary", tts.Voice("azure",
                                                                         "en-US-JennyNeural"))
    second, _ = service.wait(service.post_card(card(2))[1]["taskId"])
    assert second["status"] == "success"
    assert "word2" in azure.spoken() and "word2" not in openai.spoken()
    [*_], media = notes_and_media(tmp_path, sync_server, account)
    assert set(clips.values()) | set(second["result"]["audio"].values()) <= media
