"""The credentials file: every secret ankisync keeps, as JSON, mode 0600.

It holds the API key's hash (never the key), the random JWT signing secret, the
token generation (bumped when the API key changes, which voids older tokens),
the sync session key (never the password) and, when set up that way, the
Google TTS key. It is never pickled and never readable by other users.
"""

import json
import os
import secrets
import stat
from pathlib import Path

import files
from errors import ConfigError, DamagedFile


def load(path):
    """The stored credentials; {} before first use. Refuses a file others can read."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} can be read by other users (mode {stat.filemode(mode)}); it holds secrets."
            f" Fix it with: chmod 600 {path}")
    with open(path) as file:
        try:
            data = json.load(file)
        except ValueError as error:  # UnicodeDecodeError too
            data = error
    if not isinstance(data, dict):
        problem = data if isinstance(data, Exception) else "not a JSON object"
        raise DamagedFile(
            f"{path} is damaged ({problem}): move it aside (mv {path} {path}.damaged) and run"
            " `./run.sh setup` again (or `./run.sh api-key` and `./run.sh login USERNAME`). It held"
            " the API key's hash, the token secret, the sync session and the Google key: put the"
            " new API key into your clients; jobs, the collection and the data on the sync server"
            " are not affected")
    return data


def save(path, data):
    """Replace the file atomically, created 0600 from the start (no umask window)."""
    files.write_whole(Path(path), json.dumps(data, indent=1).encode())


def update(path, **changes):
    """Set some entries (None removes one) and return the whole."""
    data = load(path)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    save(path, data)
    return data


def ensure_signing_secret(path):
    """The install's random JWT secret, made on first use."""
    data = load(path)
    if "jwt_secret" not in data:
        data = update(path, jwt_secret=secrets.token_urlsafe(48), token_generation=1)
    return data
