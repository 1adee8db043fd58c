"""ANKISYNC_SETUP_PASSWORD_FILE: `login` and `setup` take the sync password from a file
(a Docker secret), so that `docker compose run --rm ankisync login USER` needs no prompt."""

import json


def test_login_reads_the_password_from_the_file(make_service, account, tmp_path):
    service = make_service(start=False)
    secret = tmp_path / "sync_password"
    secret.write_text("pass\n")  # as `echo pass > file` writes it
    service.env["ANKISYNC_SETUP_PASSWORD_FILE"] = str(secret)
    result = service.cli("login", account, stdin="")  # nothing on stdin, no terminal
    assert result.returncode == 0, result.stderr
    status = json.loads(service.cli("status", "--json").stdout)
    assert status["sync"]["loggedIn"] and status["sync"]["username"] == account

    secret.write_text("wrong\n")  # the file is what is read: a wrong one fails
    result = service.cli("login", account, stdin="pass\n")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_an_unreadable_password_file_is_named(make_service, account, tmp_path):
    service = make_service(start=False)
    service.env["ANKISYNC_SETUP_PASSWORD_FILE"] = str(tmp_path / "missing")
    result = service.cli("login", account, stdin="pass\n")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"ANKISYNC_SETUP_PASSWORD_FILE={tmp_path / 'missing'}: cannot read it" in result.stderr
