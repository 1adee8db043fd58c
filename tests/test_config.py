"""Settings (config.py's SETTINGS table): a bad value, a busy port or an open data
dir stops the start naming the variable, its value and its source; the README's
settings table is the table's."""

import os
import stat

import pytest

from service import Service


def test_world_readable_credentials_are_refused(tmp_path):
    service = Service(tmp_path / "data")
    assert service.cli("api-key").returncode == 0
    os.chmod(service.data_dir / "credentials.json", 0o644)
    result = service.cli("serve")
    assert result.returncode == 1 and "chmod 600" in result.stderr


def test_bad_settings_stop_the_start_naming_the_variable(tmp_path):
    service = Service(tmp_path / "data", ANKISYNC_TASK_TIMEOUT="soon")
    result = service.cli("serve")
    assert result.returncode == 1
    assert "ANKISYNC_TASK_TIMEOUT='soon' from environment" in result.stderr
    assert "Traceback" not in result.stderr
    service = Service(tmp_path / "data2", ANKISYNC_LISTEN="5000")
    result = service.cli("worker")
    assert result.returncode == 1 and "ANKISYNC_LISTEN" in result.stderr


def test_settings_from_the_data_dir_env_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".env").write_text("# mine\nANKISYNC_SYNC_ENDPOINT=ftp://nope\n")
    result = Service(data).cli("serve")
    assert result.returncode == 1
    assert f"ANKISYNC_SYNC_ENDPOINT='ftp://nope' from {data / '.env'}" in result.stderr


def test_a_port_in_use_is_named(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = Service(tmp_path / "data", ANKISYNC_LISTEN=f"127.0.0.1:{port}").cli("serve")
    assert result.returncode == 1 and "ANKISYNC_LISTEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_dir_open_to_others_is_closed(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    assert Service(data).cli("api-key").returncode == 0
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700


def test_readme_lists_every_setting():
    from pathlib import Path
    import config
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert config.reference() in readme


@pytest.mark.parametrize("value, where", [
    ("https://dictionary.cambridge.org/", "trailing slash"),
    ("https://dictionary.cambridge.org/dictionary", "a path"),
    ("dictionary.cambridge.org", "no scheme"),
    ("https://a.example, *", "* among origins"),
])
def test_cors_origins_that_are_not_origins_stop_the_start(tmp_path, value, where):
    service = Service(tmp_path / "data", ANKISYNC_CORS_ORIGINS=value)
    result = service.cli("serve")
    assert result.returncode == 1, where
    assert f"ANKISYNC_CORS_ORIGINS={value!r} from environment" in result.stderr, where
    assert "scheme://host[:port]" in result.stderr and "Traceback" not in result.stderr
    data = tmp_path / "from-file"  # the same from DATA_DIR/.env, named as the source
    data.mkdir(exist_ok=True)
    (data / ".env").write_text(f"ANKISYNC_CORS_ORIGINS={value}\n")
    result = Service(data).cli("worker")
    assert result.returncode == 1 and f"from {data / '.env'}" in result.stderr, where


def test_allowed_hosts_must_be_names(tmp_path):
    result = Service(tmp_path / "data", ANKISYNC_ALLOWED_HOSTS="https://anki.example").cli("serve")
    assert result.returncode == 1 and "ANKISYNC_ALLOWED_HOSTS='https://anki.example'" in result.stderr
    assert "Traceback" not in result.stderr

