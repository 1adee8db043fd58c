"""Real parts on loopback, shared by the tests: a sync server, a TTS endpoint, the service."""

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))        # test helpers
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the project

from anki_server import SyncServer  # noqa: E402
from fake_tts import FakeTTS  # noqa: E402
from service import Service  # noqa: E402

ACCOUNTS = 100  # the sync server's accounts; each test that syncs takes a fresh one
GOOGLE_KEY = "test-google-key"


@pytest.fixture(scope="session")
def sync_server(tmp_path_factory):
    users = {f"user{n}": "pass" for n in range(1, ACCOUNTS + 1)}
    with SyncServer(tmp_path_factory.mktemp("syncserver"), users=users) as server:
        yield server


_accounts = itertools.count(1)


@pytest.fixture
def account():
    """A username on the sync server that no other test has used (password "pass")."""
    number = next(_accounts)
    assert number <= ACCOUNTS, "raise ACCOUNTS in conftest.py"
    return f"user{number}"


@pytest.fixture(scope="session")
def _tts_server():
    with FakeTTS(valid_keys={GOOGLE_KEY}) as fake:
        yield fake


@pytest.fixture
def fake_tts(_tts_server):
    """The local Google TTS endpoint, answering normally and with no requests seen."""
    _tts_server.reset()
    _tts_server.valid_keys = {GOOGLE_KEY}
    return _tts_server


@pytest.fixture
def make_service(tmp_path, sync_server, fake_tts):
    """Start ankisync installs (run.sh) wired to the local sync server and TTS."""
    started = []

    def make(name="svc", start=True, **settings):
        settings = {"ANKISYNC_SYNC_ENDPOINT": sync_server.url,
                    "ANKISYNC_GOOGLE_API_KEY": GOOGLE_KEY,
                    "ANKISYNC_GOOGLE_TTS_ENDPOINT": fake_tts.url,
                    "ANKISYNC_TASK_TIMEOUT": 30, **settings}
        service = Service(tmp_path / name, **settings)
        started.append(service)
        return service.start() if start else service

    yield make
    for service in started:
        service.kill()


@pytest.fixture
def service(make_service):
    return make_service()
