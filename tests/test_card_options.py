"""A card's own deck, tags, voice, speaking rate and recording of its word, over REST.

Through the real service (run.sh), the real Google client against the local fake,
the local sync server (a fresh second collection is the witness) and a small web
site on loopback that serves the word's recording, and worse.
"""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anki_server import download_collection, media_files, notes_in, seed_other_device
from fake_tts import SILENT_MP3
from helpers import card, wait_until

RECORDING = b"ID3\x04\x00\x00\x00\x00\x00\x00" + SILENT_MP3 + b"the dictionary's own"
OGG = b"OggS\x00\x02" + bytes(200)
HTML = b"<!DOCTYPE html><html><body>Sign in to hear this word</body></html>"
HUGE = 50 * 2**20


def synced_notes(tmp_path, sync_server, username):
    """The notes and media names a fresh second device gets from the sync server."""
    col = download_collection(tmp_path / f"device-{time.monotonic_ns()}", sync_server.url,
                              username, "pass")
    try:
        return {note["fields"]["Word"]: note for note in notes_in(col)}, media_files(col)
    finally:
        col.close()


def finished(service, body):
    assert body and "taskId" in body, body
    job, _ = service.wait(body["taskId"])
    return job


# --- deck, tags, voice and rate ------------------------------------------------------

def test_deck_tags_voice_and_rate_reach_a_fresh_collection(make_service, sync_server, account,
                                                           fake_tts, tmp_path):
    service = make_service()
    service.sync_login(account)
    chosen = dict(card(1, "ubiquitous"), deck="English::Cambridge B2",
                  tags=["cambridge", "B2", "adjectives::common"], voice="en-GB-Wavenet-B",
                  speakingRate=0.75)
    status, body = service.post_card(chosen)
    assert status == 202, body
    job = finished(service, body)
    assert job["status"] == "success", job
    assert job["result"]["deck"] == "English::Cambridge B2"
    assert job["result"]["tags"] == ["cambridge", "B2", "adjectives::common"]
    plain = finished(service, service.post_card(card(2, "mundane"))[1])
    assert plain["status"] == "success" and plain["result"]["deck"] == "English Vocabulary"

    # the fake Google heard the card's voice and rate, and the settings' for the plain card
    heard = {request["body"]["input"]["text"]: request["body"] for request in fake_tts.requests}
    for text in ("ubiquitous", "Sentence 1 with ubiquitous."):
        assert heard[text]["voice"] == {"languageCode": "en-GB", "name": "en-GB-Wavenet-B"}
        assert heard[text]["audioConfig"]["speakingRate"] == 0.75
    for text in ("mundane", "Sentence 2 with mundane."):
        assert heard[text]["voice"]["name"] == "en-US-Wavenet-D"
        assert "speakingRate" not in heard[text]["audioConfig"]
    # the card's clips differ from what the settings' voice would make of the same text
    assert set(job["result"]["audio"].values()).isdisjoint(plain["result"]["audio"].values())

    notes, media = synced_notes(tmp_path, sync_server, account)
    assert notes["ubiquitous"]["deck"] == "English::Cambridge B2"
    assert sorted(notes["ubiquitous"]["tags"]) == ["B2", "adjectives::common", "cambridge"]
    assert notes["mundane"]["deck"] == "English Vocabulary" and notes["mundane"]["tags"] == []
    assert set(job["result"]["audio"].values()) <= media


@pytest.mark.slow  # a sync hanging till anki's network timeout
def test_a_retried_job_keeps_its_voice_and_makes_one_note(make_service, sync_server, account,
                                                          fake_tts, tmp_path):
    """A refused sync fails the attempt after the note is added; the retry finds the note
    (guid from the job) and its clips, in the card's voice: one note, spoken once."""
    service = make_service()
    service.sync_login(account)
    sync_server.pause()
    try:
        status, body = service.post_card(dict(card(3, "serene"), voice="en-AU-Wavenet-C",
                                              speakingRate=1.5, tags=["calm"]))
        assert status == 202, body
        service.wait(body["taskId"], until=("retrying",))
    finally:
        sync_server.resume()
    job = finished(service, body)
    assert job["status"] == "success" and job["attempts"] >= 2, job
    names = [request["body"]["voice"]["name"] for request in fake_tts.requests]
    assert names == ["en-AU-Wavenet-C", "en-AU-Wavenet-C"]  # the word and the sentence, once
    notes, _ = synced_notes(tmp_path, sync_server, account)
    assert list(notes) == ["serene"] and notes["serene"]["tags"] == ["calm"]


def test_after_a_full_download_the_note_is_re_added_to_its_deck_with_its_tags(
        make_service, sync_server, account, fake_tts, tmp_path):
    seed_other_device(tmp_path / "phone", sync_server.url, account, "from the phone")
    service = make_service()
    status, body = service.post_card(dict(card(4, "offline"), deck="Travel::Words",
                                          tags=["trip"]))
    job = finished(service, body)
    assert job["status"] == "success" and job["result"]["synced"] is False, job
    service.sync_login(account)  # the server has a collection: a full download, then re-apply
    wait_until(lambda: service.job(job["taskId"])["result"]["synced"],
               lambda: "the card synced:\n" + service.logs())
    assert "re-applied after full download" in service.logs()
    col = download_collection(tmp_path / "fresh", sync_server.url, account, "pass")
    try:
        notes = {note["fields"].get("Word") or note["fields"]["Front"]: note
                 for note in notes_in(col)}
    finally:
        col.close()
    assert set(notes) == {"offline", "from the phone"}
    assert notes["offline"]["deck"] == "Travel::Words" and notes["offline"]["tags"] == ["trip"]


def test_a_voice_the_provider_refuses_fails_the_job_naming_the_field(service, fake_tts):
    job = finished(service, service.post_card(dict(card(5), voice="alloy"))[1])
    assert job["status"] == "failure" and job["error"]["type"] == "TTSRefused", job
    assert "voice 'alloy'" in job["error"]["message"]
    assert job["attempts"] == 1


def test_espeak_speaks_at_the_cards_rate(make_service):
    service = make_service(ANKISYNC_TTS="espeak", ANKISYNC_GOOGLE_API_KEY=None)
    sizes = {}
    for n, rate in enumerate((None, 2.0, 0.5)):
        job = finished(service, service.post_card(dict(card(40 + n, "rhythm"),
                                                       speakingRate=rate))[1])
        assert job["status"] == "success", job
        word = job["result"]["audio"]["word"]
        assert word.endswith(".wav")
        sizes[rate] = (service.data_dir / "collection.media" / word).stat().st_size
    assert sizes[2.0] < sizes[None] < sizes[0.5], sizes  # faster is shorter


BAD = [
    ("deck", ""), ("deck", "   "), ("deck", "Cambridge\tB2"), ("deck", "line\nbreak"),
    ("deck", "x" * 201), ("deck", 5), ("deck", ["a"]),
    ("tags", "cambridge b2"), ("tags", ["two words"]), ("tags", [""]), ("tags", ["x"] * 21),
    ("tags", ["x" * 101]), ("tags", [1]), ("tags", {"a": 1}), ("tags", ["tab\tbed"]),
    ("voice", ""), ("voice", "--stdout"), ("voice", " en-US-Wavenet-D"), ("voice", "a\nb"),
    ("voice", "v" * 101), ("voice", 7),
    ("speakingRate", 0.2), ("speakingRate", 4.5), ("speakingRate", "1.0"),
    ("speakingRate", True), ("speakingRate", -1),
    ("wordAudioUrl", "ftp://dictionary.cambridge.org/media/x.mp3"),
    ("wordAudioUrl", "file:///etc/passwd"), ("wordAudioUrl", "https://evil.example/x.mp3"),
    ("wordAudioUrl", "https://dictionary.cambridge.org@evil.example/x.mp3"),
    ("wordAudioUrl", "https://dictionary.cambridge.org.evil.example/x.mp3"),
    ("wordAudioUrl", "https://dictionary.cambridge.org:8443/x.mp3"),
    ("wordAudioUrl", "http://127.0.0.1:9/x.mp3"), ("wordAudioUrl", "http://localhost/x.mp3"),
    ("wordAudioUrl", "http://169.254.169.254/latest/meta-data/"),
    ("wordAudioUrl", "https://dictionary.cambridge.org/x y.mp3"), ("wordAudioUrl", 5),
]


def test_bad_options_are_refused_at_the_door_naming_the_field(make_service):
    # the default hosts: the Cambridge dictionary's only (no fetch is made by this test)
    service = make_service(ANKISYNC_AUDIO_URL_HOSTS=None)
    for field, value in BAD:
        status, body = service.post_card(dict(card(6), **{field: value}))
        assert status == 400, (field, value, body)
        assert list(body["errors"]) == [field], (field, value, body)
        assert field in body["message"], body
    status, body = service.post_card(dict(card(6), wordAudioUrl="http://127.0.0.1:9/x.mp3"))
    assert "ANKISYNC_AUDIO_URL_HOSTS (dictionary.cambridge.org)" in body["message"], body
    assert service.call("GET", "/api/v1/tasks")[2]["tasks"] == []  # no job was made
    # null is absent: the settings' deck, no tags, the configured voice
    status, body = service.post_card(dict(card(7), deck=None, tags=None, voice=None,
                                          speakingRate=None, wordAudioUrl=None))
    assert status == 202, body


# --- the word's recording ------------------------------------------------------------

class Site(BaseHTTPRequestHandler):
    """A dictionary's web site on loopback: the word's recording, and worse."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        server = self.server
        server.seen.append(self.path)
        try:
            if self.path == "/word.mp3":
                self._send(200, RECORDING, "audio/mpeg")
            elif self.path == "/word.ogg":
                self._send(200, OGG, "audio/ogg")
            elif self.path == "/page.mp3":  # a sign-in page, claiming to be audio
                self._send(200, HTML, "audio/mpeg")
            elif self.path.startswith("/to?"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/to?"):])
                self.end_headers()
            elif self.path in ("/huge.mp3", "/huge-undeclared.mp3"):
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                if self.path == "/huge.mp3":
                    self.send_header("Content-Length", str(HUGE))
                self.end_headers()
                self.wfile.write(RECORDING)
                for _ in range(HUGE // 2**16):
                    self.wfile.write(bytes(2**16))
            elif self.path == "/slow.mp3":  # the first request hangs: a server gone silent
                with server.lock:
                    server.slow_calls += 1
                    first = server.slow_calls == 1
                if first:
                    server.release.wait(60)
                    return
                self._send(200, RECORDING, "audio/mpeg")
            elif self.path == "/flaky.mp3":
                with server.lock:
                    server.failures -= 1
                    failing = server.failures >= 0
                if failing:
                    self._send(503, b"busy", "text/plain")
                else:
                    self._send(200, RECORDING, "audio/mpeg")
            else:
                self._send(404, b"not found", "text/plain")
        except OSError:  # the service hung up on us, as it should on a huge body
            server.cut.set()

    def _send(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    server.daemon_threads = True
    server.seen, server.cut, server.lock, server.failures = [], threading.Event(), \
        threading.Lock(), 0
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    server.slow_calls, server.release = 0, threading.Event()
    server.host = f"127.0.0.1:{server.server_address[1]}"
    server.url = f"http://{server.host}"
    return server


@pytest.fixture
def sites():
    """The dictionary's site (listed) and another one on loopback (not listed)."""
    dictionary, other = start_site(), start_site()
    yield dictionary, other
    for server in (dictionary, other):
        server.release.set()
        server.shutdown()
        server.server_close()


def word_files(service):
    """Recordings stored in the media folder, and half-written files anywhere."""
    media, temp = service.data_dir / "collection.media", service.data_dir / "tmp"
    return (sorted(path.name for path in media.glob("ankisync-word-*")),
            sorted(path.name for folder in (media, temp) for path in folder.glob("*.tmp")))


def test_the_dictionarys_recording_is_the_notes_word_audio(make_service, sites, sync_server,
                                                           account, fake_tts, tmp_path):
    dictionary, _ = sites
    service = make_service(ANKISYNC_AUDIO_URL_HOSTS=dictionary.host)
    service.sync_login(account)
    body = service.post_card(dict(card(8, "sonorous"),
                                  wordAudioUrl=f"{dictionary.url}/word.mp3"))[1]
    job = finished(service, body)
    assert job["status"] == "success", job
    word, text = job["result"]["audio"]["word"], job["result"]["audio"]["text"]
    assert word.startswith("ankisync-word-") and word.endswith(".mp3")
    assert (service.data_dir / "collection.media" / word).read_bytes() == RECORDING
    # the sentence is still spoken, the word is not
    assert [r["body"]["input"]["text"] for r in fake_tts.requests] == ["Sentence 8 with sonorous."]
    # through a redirect on the same host, an OGG recording keeps its real extension
    other = finished(service, service.post_card(dict(card(9, "lilting"),
                     wordAudioUrl=f"{dictionary.url}/to?/word.ogg"))[1])
    assert other["status"] == "success", other
    assert other["result"]["audio"]["word"].endswith(".ogg")
    assert dictionary.seen == ["/word.mp3", "/to?/word.ogg", "/word.ogg"]

    notes, media = synced_notes(tmp_path, sync_server, account)
    assert notes["sonorous"]["fields"]["DefinitionAudio"] == f"[sound:{word}]"
    assert notes["sonorous"]["fields"]["TextAudio"] == f"[sound:{text}]"
    assert {word, text, other["result"]["audio"]["word"]} <= media


def test_recordings_that_are_not_allowed_or_not_audio_fail_the_job(make_service, sites):
    dictionary, other = sites
    service = make_service(ANKISYNC_AUDIO_URL_HOSTS=dictionary.host)
    # a host off the list is refused at the door, the other site's loopback address too
    status, body = service.post_card(dict(card(10), wordAudioUrl=f"{other.url}/word.mp3"))
    assert status == 400 and "ANKISYNC_AUDIO_URL_HOSTS" in body["errors"]["wordAudioUrl"], body
    failures = {
        f"/to?{other.url}/word.mp3": "is not on a host of ANKISYNC_AUDIO_URL_HOSTS",
        "/to?file:///etc/passwd": "is not an http:// or https:// URL",
        "/page.mp3": "is not audio",
        "/huge.mp3": "larger than 5 MB",
        "/huge-undeclared.mp3": "larger than 5 MB",
        "/missing.mp3": "return code 404",
    }
    for n, (path, why) in enumerate(failures.items()):
        status, body = service.post_card(dict(card(20 + n), wordAudioUrl=dictionary.url + path))
        assert status == 202, body
        job = finished(service, body)
        assert job["status"] == "failure", (path, job)
        assert job["error"]["type"] == "WordAudioRefused" and job["attempts"] == 1, (path, job)
        assert why in job["error"]["message"] and "wordAudioUrl" in job["error"]["message"], job
    assert other.seen == []  # the redirect off the list was never followed
    assert dictionary.cut.wait(10)  # the undeclared huge body was hung up on
    assert word_files(service) == ([], [])  # nothing stored, nothing left half-written


def test_a_listed_name_that_resolves_to_this_machine_is_never_fetched(make_service, sites):
    dictionary, _ = sites
    port = dictionary.server_address[1]
    service = make_service(ANKISYNC_AUDIO_URL_HOSTS=f"localhost:{port}")
    status, body = service.post_card(dict(card(30),
                                          wordAudioUrl=f"http://localhost:{port}/word.mp3"))
    assert status == 202, body  # the form is fine: the worker resolves the name
    job = finished(service, body)
    assert job["status"] == "failure" and job["error"]["type"] == "WordAudioRefused", job
    assert "on this machine or a private network" in job["error"]["message"]
    assert dictionary.seen == [] and word_files(service) == ([], [])


def test_a_recording_that_failed_for_a_while_is_fetched_on_retry(make_service, sites):
    dictionary, _ = sites
    dictionary.failures = 2  # 503, 503, then the recording
    service = make_service(ANKISYNC_AUDIO_URL_HOSTS=dictionary.host)
    status, body = service.post_card(dict(card(31), wordAudioUrl=f"{dictionary.url}/flaky.mp3"))
    job, seen = service.wait(body["taskId"])
    assert job["status"] == "success" and job["attempts"] == 3, job
    assert "retrying" in seen
    word = job["result"]["audio"]["word"]
    assert (service.data_dir / "collection.media" / word).read_bytes() == RECORDING
    assert dictionary.seen == ["/flaky.mp3"] * 3


@pytest.mark.slow  # waits out the fetch's deadline (a quarter of the task timeout)
def test_a_recording_that_does_not_come_in_time_is_retried(make_service, sites):
    dictionary, _ = sites
    service = make_service(ANKISYNC_AUDIO_URL_HOSTS=dictionary.host)
    status, body = service.post_card(dict(card(32), wordAudioUrl=f"{dictionary.url}/slow.mp3"))
    job = finished(service, body)
    assert job["status"] == "success" and job["attempts"] == 2, job
    assert "wordAudioUrl: " in service.logs() and "took longer than 7 s; the job will be" \
        " retried" in service.logs()
    assert (service.data_dir / "collection.media" / job["result"]["audio"]["word"]) \
        .read_bytes() == RECORDING
