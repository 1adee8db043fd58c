"""How many text-to-speech requests the worker has in flight, and what a 429 does to them
(tts_limit.py): through the real service, its Huey consumer and the local fakes of
Google, OpenAI-compatible servers and Azure, which count what they have in flight."""

import os
import re

import pytest

import config
import errors
import tts
import tts_limit
import tts_rest
from conftest import GOOGLE_KEY
from fake_speech import FakeAzure, FakeOpenAI
from helpers import card, run_sh_stops, wait_for_log, wait_until
from service import Service
from test_tts_providers import AZURE_KEY, OPENAI_KEY

CUT = re.compile(r"(\w+) text-to-speech is rate-limiting \(429\): (\d+) requests in flight at"
                 r" most now")


def burst(service, fake, count, before=None):
    """Post `count` cards that the worker then speaks in one batch, their clips held by
    the fake (which must be holding): the task ids, the plug card's first.

    A plug card is spoken first and held, so that the others all wait in the queue
    (each 202 comes once its job is stored) and join its batch when it is released,
    claimed in one go as a burst is. before(): called before that release, once the
    plug's requests have come (what the fake answers the burst, say).
    """
    plug = service.post_card(card(1000))[1]["taskId"]
    hold_wave(fake, 2)
    ids = [service.post_card(card(n))[1]["taskId"] for n in range(count)]
    if before is not None:
        before()
    fake.release(hold_again=True)  # the plug's clips answered; the burst's held in turn
    return [plug] + ids


def settle(service, ids):
    """Every job finished once: success at the first attempt, never retried."""
    for task_id in ids:
        job, seen = service.wait(task_id)
        assert job["status"] == "success" and job["attempts"] == 1, (job, seen)
        assert "retrying" not in seen, seen


def hold_wave(fake, count):
    for _ in range(count):
        fake.wait_held(timeout=20)


def test_a_burst_speaks_all_its_clips_at_once(make_service, fake_tts):
    service = make_service()
    fake_tts.hold()
    ids = burst(service, fake_tts, 20)
    hold_wave(fake_tts, 40)  # 20 words and 20 sentences, all asked before any answer
    assert fake_tts.in_flight == 40
    fake_tts.release()
    settle(service, ids)
    assert fake_tts.max_in_flight == 40 and fake_tts.rate_limited == 0
    assert "up to 64 requests at once" in service.logs()  # said at start


def test_the_setting_caps_the_requests_in_flight(make_service, fake_tts):
    service = make_service(ANKISYNC_TTS_IN_FLIGHT=3)
    fake_tts.busy_over(3)  # a fourth request at once would get a 429
    fake_tts.hold()
    ids = burst(service, fake_tts, 10)
    hold_wave(fake_tts, 3)
    assert fake_tts.in_flight == 3
    fake_tts.release()
    settle(service, ids)
    assert fake_tts.max_in_flight == 3 and fake_tts.rate_limited == 0
    assert len(fake_tts.requests) == 22  # each clip asked once: nothing was refused
    assert "up to 3 requests at once" in service.logs()


@pytest.mark.parametrize("retry_after", [None, 0.5])
def test_google_429s_slow_the_burst_down_and_fail_no_job(make_service, fake_tts, retry_after):
    service = make_service()
    fake_tts.hold()
    # Google's quota, hit by the whole burst at once
    ids = burst(service, fake_tts, 20,
                before=lambda: fake_tts.fail_next(40, 429, retry_after=retry_after))
    hold_wave(fake_tts, 40)
    fake_tts.release(hold_again=True)  # 40 answers of 429; the clips asked again are held
    wait_for_log(service, "google text-to-speech is rate-limiting (429)")
    provider, allowed = CUT.search(service.logs()).groups()
    assert provider == "google" and int(allowed) < 40
    hold_wave(fake_tts, int(allowed))  # asked again, fewer at once
    assert fake_tts.in_flight == int(allowed)
    fake_tts.release()
    settle(service, ids)
    assert fake_tts.rate_limited == 40 and len(CUT.findall(service.logs())) == 1
    assert len(fake_tts.requests) == 2 + 40 + 40  # each clip asked once again, no more


def provider_settings(provider, fake):
    if provider == "openai":
        return {"ANKISYNC_TTS": "openai", "ANKISYNC_OPENAI_TTS_BASE_URL": fake.url,
                "ANKISYNC_OPENAI_TTS_API_KEY": OPENAI_KEY}
    return {"ANKISYNC_TTS": "azure", "ANKISYNC_AZURE_TTS_ENDPOINT": fake.url,
            "ANKISYNC_AZURE_TTS_KEY": AZURE_KEY}


@pytest.fixture(params=["openai", "azure"])
def speech(request):
    """The OpenAI-compatible or the Azure fake, with the provider's settings."""
    fake = FakeOpenAI() if request.param == "openai" else FakeAzure()
    fake.valid_keys = {OPENAI_KEY if request.param == "openai" else AZURE_KEY}
    with fake:
        yield request.param, fake


def test_a_busy_rest_provider_is_asked_again_at_its_pace(make_service, speech):
    provider, fake = speech
    # 120 s for the job: a quarter of it is the patience (30 s) for the clips' waits
    service = make_service(**provider_settings(provider, fake), ANKISYNC_TASK_TIMEOUT=120)
    fake.busy_over(2, retry_after=0.2)  # a server that takes two at once, and says so
    fake.hold()
    ids = burst(service, fake, 5)
    hold_wave(fake, 2)
    wait_until(lambda: fake.rate_limited >= 2, "429s for the requests beyond two")
    wait_for_log(service, f"{provider} text-to-speech is rate-limiting (429)")
    fake.release()
    settle(service, ids)
    assert sorted(fake.spoken()) == sorted(
        text for n in [1000, *range(5)] for text in (f"word{n}", f"Sentence {n} with word{n}."))


def test_a_rest_429_with_retry_after_is_waited_for_not_retried_as_a_job(make_service, speech):
    provider, fake = speech
    fake.fail_next(2, 429, retry_after=1)
    service = make_service(**provider_settings(provider, fake))
    [task_id] = [service.post_card()[1]["taskId"]]
    settle(service, [task_id])
    assert fake.rate_limited == 2 and len(fake.spoken()) == 2
    assert "rate-limiting (429)" in service.logs()


def test_a_429_asking_more_than_the_patience_leaves_the_retry_to_the_job(make_service, speech):
    provider, fake = speech
    fake.fail_next(1, 429, retry_after=3600)  # an hour: longer than a job may wait
    service = make_service(**provider_settings(provider, fake))
    job, seen = service.wait(service.post_card()[1]["taskId"])
    assert job["status"] == "success" and job["attempts"] == 2, (job, seen)
    assert "still rate-limiting" in service.logs()
    assert fake.rate_limited == 1 and len(fake.spoken()) == 2


@pytest.mark.parametrize("value", ["lots", "0", "-3", "257", "2.5"])
def test_a_bad_in_flight_value_stops_the_start(tmp_path, value):
    service = Service(tmp_path / "data", ANKISYNC_TTS_IN_FLIGHT=value)
    code, stderr = run_sh_stops(service.env)
    assert code != 0 and f"ANKISYNC_TTS_IN_FLIGHT={value!r} from environment" in stderr, stderr
    assert "auto or a whole number from 1 to 256" in stderr and "Traceback" not in stderr


def test_a_bad_in_flight_value_in_the_env_file_is_named_with_the_file(tmp_path):
    service = Service(tmp_path / "data")
    service.data_dir.mkdir(mode=0o700)
    (service.data_dir / ".env").write_text("ANKISYNC_TTS_IN_FLIGHT=many\n")
    result = service.cli("worker")
    assert result.returncode == 1
    assert f"ANKISYNC_TTS_IN_FLIGHT='many' from {service.data_dir / '.env'}" in result.stderr


# the limiter's arithmetic and what it reads of a server's wish

def settings(tmp_path, **values):
    return config.load({"ANKISYNC_DATA_DIR": str(tmp_path), **values})


def test_each_provider_has_its_ceiling_and_the_setting_overrides_them(tmp_path):
    auto = settings(tmp_path)
    assert auto.tts_in_flight is None
    assert [tts_limit.ceiling(p, auto) for p in ("google", "openai", "azure")] == [64, 4, 8]
    assert tts_limit.ceiling("espeak", auto) == len(os.sched_getaffinity(0))
    fixed = settings(tmp_path, ANKISYNC_TTS_IN_FLIGHT="12")
    assert {tts_limit.ceiling(p, fixed) for p in ("google", "openai", "azure", "espeak")} == {12}


def test_a_429_halves_what_was_in_flight_once_and_successes_grow_it_back():
    limit = tts_limit.Limit("google", 64)
    sent = [limit.enter() for _ in range(40)]
    for era in sent:  # 40 answers of 429 to requests sent together: one cut, not 40
        limit.leave(era, "rate-limited")
    assert limit.allowed == 20 and limit.in_flight == 0
    for _ in range(20):  # as many successes as allowed: one more allowed
        limit.leave(limit.enter(), "ok")
    assert limit.allowed == 21
    for _ in range(5):
        limit.leave(limit.enter(), "rate-limited")  # each sent after the last cut
    assert limit.allowed == 1  # floor: one at a time, never none
    for _ in range(200):
        limit.leave(limit.enter(), "ok")
    assert limit.allowed == 20  # grows back slowly: +1 per `allowed` successes
    limit.leave(limit.enter(), "failed")  # another error neither cuts nor grows
    assert limit.allowed == 20


@pytest.mark.parametrize("header, seconds", [
    ("3", 3.0), ("0.5", 0.5), ("1.5s", 1.5), (" 2 ", 2.0), ("-4", 0.0), ("soon", None),
    ("", None), (None, None), ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_is_read_or_ignored(header, seconds):
    assert tts_limit.retry_after(header) == seconds


def test_the_growing_pause_is_short_and_bounded():
    pauses = [tts_limit.pause(None, attempt) for attempt in range(1, 12)]
    assert all(0 < p <= tts_limit.LONGEST_PAUSE for p in pauses)
    assert pauses[0] <= tts_limit.FIRST_PAUSE
    assert tts_limit.pause(2.5, 1) == 2.5  # the server's wish, as given


def test_a_429_is_unavailable_for_the_job_when_it_stands():
    error = tts_limit.RateLimited("busy", retry_after=1)
    assert isinstance(error, errors.TTSUnavailable) and error.kind == "TTSUnavailable"


def test_each_provider_429_is_read_as_a_rate_limit_with_its_wish(fake_tts, tmp_path):
    """What tts_limit acts on: Google's RetryInfo, OpenAI's and Azure's Retry-After."""
    fake_tts.fail_next(1, 429, retry_after=2.5)
    fake_tts.fail_next(1, 429)
    for wish in (2.5, None):
        with pytest.raises(tts_limit.RateLimited, match="rate-limiting") as raised:
            tts.synthesize("Hello.", voice="en-US-Wavenet-D", api_key=GOOGLE_KEY,
                           endpoint=fake_tts.url, timeout=5)
        assert raised.value.retry_after == wish
    for fake in (FakeOpenAI(), FakeAzure()):
        with fake:
            fake.fail_next(1, 429, retry_after=7)
            with pytest.raises(tts_limit.RateLimited, match="wait 7 s") as raised:
                if isinstance(fake, FakeOpenAI):
                    tts_rest.openai_speech("Hello.", base_url=fake.url, api_key=None,
                                           model="tts-1", voice="alloy", speed=1.0, timeout=5)
                else:
                    tts_rest.azure_speech("Hello.", region=None, endpoint=fake.url,
                                          api_key=AZURE_KEY, voice="en-US-JennyNeural",
                                          rate=1.0, timeout=5)
            assert raised.value.retry_after == 7
