"""The command line: every role and command of ./run.sh, and what each does at start.

ankisync.py's main() hands over here with its Bottle app; this module never
imports ankisync.py back. Commands: serve (the API on waitress), worker (the
Huey consumer), login, api-key, setup and status; start-up is taking the data
dir's lock, checking its files, making the tables, and setting up logging.
"""

import argparse
import fcntl
import functools
import getpass
import json
import logging
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import auth
import backup
import config
import credentials
import db
import duplicates
import huey_tasks
import jobs
import locks
import notify
import tts
from errors import AlreadyRunning, AnkisyncError, ConfigError, DamagedFile
from health import service_status
from version import __version__

log = logging.getLogger("ankisync")

# The largest request body the API reads (ankisync.json_body); waitress itself
# refuses four times that before the app sees it.
MAX_BODY = 64 * 1024


def settings():
    return config.current()


def stored_credentials():
    return credentials.load(config.credentials_path(settings()))


def hold_lock(current, role):
    """This data dir's lock for role ("api" or "worker"), held for the process's life.

    A second instance is refused before it touches anything, with the first
    one's pid and address. The fd is never closed: the lock goes with the
    process (and the worker's children, which inherit it).
    """
    config.ensure_data_dir(current)
    host, port = current.listen
    fd, holder = locks.try_lock(current, role, f"{host}:{port}")
    if fd is None:
        raise AlreadyRunning(
            f"ankisync is already running on the data dir {current.data_dir.resolve()}: its"
            f" {role.replace('api', 'API')}"
            f" has pid {holder[0]}, its API listens on {holder[-1]}"
            f" ({config.lock_path(current, role)} is locked). Stop it"
            " first (sudo systemctl stop ankisync, or Ctrl-C where ./run.sh runs), or give this"
            " one its own ANKISYNC_DATA_DIR")
    return fd


def check_files(current):
    """Stop with the file's name and the fix when a file of the data dir is damaged."""
    path, kept = config.db_path(current), config.credentials_path(current)
    fix = (f"move it aside (mv {path} {path}.damaged, and its -wal and -shm files), then put"
           f" back a backup: ./run.sh restore {config.backup_dir(current)}/TIME-jobs.db (README:"
           " Backup and restore). Without a backup,"
           " just start again: a new one is made; notes already in the collection are kept and"
           " synced, but cards still waiting in it are lost (post them again) and clients log in"
           " again with the API key. Nothing in it comes back from the sync server")
    wal = path.with_name(path.name + "-wal")
    # SQLite would take an emptied file for a new one, and start on an empty job table
    if (path.exists() and path.stat().st_size == 0 and kept.exists()
            and not (wal.exists() and wal.stat().st_size)):
        raise DamagedFile(f"{path} is empty, yet this data dir was used before ({kept} exists):"
                          f" the jobs it held are gone. Stop ankisync, {fix}")
    db.check_file(path, "stop ankisync, " + fix)
    credentials.load(kept)  # raises naming the file when it is not JSON


def init_storage(current):
    config.ensure_data_dir(current)
    # One process at a time: run.sh starts the API and the worker together, and
    # a new ankisync.db is an empty file until its first write, which the other's
    # check would take for a damaged one. Released when the file closes.
    with open(config.lock_path(current, "init"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_files(current)
        path = config.db_path(current)
        jobs.init(path)
        duplicates.init(path)
        auth.init(path)
        credentials.ensure_signing_secret(config.credentials_path(current))


def voice(current):
    """The TTS provider in use, its credentials and voice, for the start-up log."""
    keys = tts.keys(current)
    return tts.describe(tts.choose(current.tts, keys["google"]), current, keys)


def serve(args, app):
    import waitress
    auth.keep_jwt_light()
    current = settings()
    hold_lock(current, "api")
    init_storage(current)
    huey_tasks.init(current)  # the queue's tables exist before the first request
    host, port = current.listen
    for line in config.describe(current, voice(current)):
        log.info("%s", line)
    if "api_key_sha256" not in stored_credentials():
        log.warning("no API key yet: make one with `./run.sh api-key`")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # A stop while waitress builds its server (the worker failed at once, say) waits
    # until it is built: raised inside waitress's constructors, it left half-made
    # objects whose finalizers printed tracebacks on the way out.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        server = waitress.create_server(
            app, host=host, port=port, threads=16, ident="ankisync",
            max_request_body_size=MAX_BODY * 4,
            # Slow clients (slowloris: a header byte every few seconds) cost waitress a
            # socket, not a thread, until connection_limit sockets are open; then it stops
            # accepting and the API is gone. So: room for many (poll(), not select(), which
            # fails past 1,024 descriptors; each idle connection costs a few KB), and idle
            # ones are closed after 30 s, checked every 5 s, instead of 120 s every 30 s.
            connection_limit=800, asyncore_use_poll=True, channel_timeout=30,
            cleanup_interval=5,
            # Proxy headers reach the app, which trusts them for nothing (the caller is
            # REMOTE_ADDR) but sees that a local request came through a reverse proxy
            # (ankisync.check_metrics_access); waitress would drop them unseen.
            clear_untrusted_proxy_headers=False)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}): is ankisync already"
                          " running? Stop it, or set ANKISYNC_LISTEN to another port") from None
    server.channel_class = _json_error_channel()
    log.info("API listening on http://%s:%s", host, port)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    server.run()


def _json_error_channel():
    """waitress's channel, with its own errors (body too large, bad request) as JSON."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            self.status = f"{error.code} {error.reason}"
            reason = (f"request body too large: at most {MAX_BODY} bytes" if error.code == 413
                      else f"{error.reason.lower()}: {error.body}")
            body = json.dumps({"message": reason}).encode()
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    return type("JsonErrorChannel", (HTTPChannel,), {"error_task_class": JsonErrorTask})


def run_worker(args):
    current = settings()
    hold_lock(current, "worker")
    init_storage(current)
    # Nobody holds the collection now: a damaged one is refused here, not mid-job.
    collection = config.collection_path(current)
    db.check_file(collection, (
        f"stop ankisync, move it aside (mv {collection} {collection}.damaged) and start again:"
        " the next sync downloads your collection from the sync server, and cards added since"
        " the last sync are added again from the job table. Without a sync login, put back a"
        f" backup instead: ./run.sh restore {config.backup_dir(current)}/TIME-collection.colpkg"
        " (README: Backup and restore)"))
    huey_tasks.init(current)
    notify.check(current.notify)
    for line in config.describe(current, voice(current)):
        log.info("%s", line)
    pid_path = config.worker_pid_path(current)
    pid_path.write_text(str(os.getpid()))
    try:
        huey_tasks.run_consumer(current)
    finally:
        pid_path.unlink(missing_ok=True)


def read_password():
    path = os.environ.get("ANKISYNC_SETUP_PASSWORD_FILE")  # a Docker secret, say
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as error:
            raise ConfigError(f"ANKISYNC_SETUP_PASSWORD_FILE={path}: cannot read it"
                              f" ({error.strerror})") from None
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def do_login(username, password):
    """Log into the sync server, keep only the session key, sync what waits."""
    import ankiweb
    current = settings()
    init_storage(current)
    huey_tasks.init(current)
    session = ankiweb.login(username, password, current.sync_endpoint)
    credentials.update(config.credentials_path(current), sync={
        "username": username, "hkey": session["hkey"], "endpoint": session["endpoint"],
        "login_endpoint": current.sync_endpoint})
    huey_tasks.sync_now()  # cards made before the login go up now
    log.info("logged into %s as %s; the session key is stored, the password is not",
             current.sync_endpoint or config.ANKIWEB, username)


def login_command(args):
    do_login(args.username, read_password())


def make_api_key():
    key = auth.new_api_key(config.credentials_path(settings()))
    print(key, flush=True)
    log.warning("this is your new API key; it is shown only once (only its hash is kept)."
                " Tokens issued with an older key no longer work.")


def api_key_command(args):
    current = settings()
    init_storage(current)
    if args.if_missing and "api_key_sha256" in stored_credentials():
        return
    make_api_key()


def status_command(args):
    """The service at a glance; exit status 1 when the worker is not running."""
    current = settings()
    init_storage(current)
    info = service_status(current)
    info["dataDir"] = {"path": str(current.data_dir.resolve()),
                       "bytes": sum(p.stat().st_size for p in current.data_dir.rglob("*")
                                    if p.is_file())}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info["worker"]["alive"] else 1
    sync, queue, day, connect = info["sync"], info["queue"], info["last24h"], info["ankiconnect"]
    worker = (f"running (pid {info['worker']['pid']})" if info["worker"]["alive"]
              else "NOT RUNNING: start it with ./run.sh (or systemctl start ankisync)")
    login = (f"logged in as {sync['username']} at {sync['endpoint']}" if sync["loggedIn"]
             else f"not logged in: ./run.sh login USERNAME ({sync['endpoint']})")
    last = (f"{sync['lastSyncAt']} ({sync['lastOutcome']})" if sync["lastSyncAt"] else "never")
    who = ("key required" if connect["keyRequired"]
           else "no key: only this user's programs on this machine")
    ankiconnect = {"off": "off (ANKISYNC_ANKICONNECT_LISTEN is empty)",
                   "listening": f"on http://{connect['listen']}, {who}",
                   "starting": f"starting on {connect['listen']}",
                   "stopped": "not serving: the worker is not running",
                   }.get(connect["state"], f"NOT SERVING: {connect['problem']}")
    lines = [
        f"worker     {worker}",
        f"queue      {queue['pending']} pending, {queue['started']} started,"
        f" {queue['retrying']} retrying",
        f"last 24 h  {day['success']} done, {day['failure']} failed"
        + ("  (GET /api/v1/tasks?status=failure lists them)" if day["failure"] else ""),
        f"sync       {login}",
        f"last sync  {last}",
        f"last error {sync['lastError'] or 'none'}",
        f"voice      {info['tts']}",
        f"ankiconnect {ankiconnect}",
        f"data dir   {info['dataDir']['path']} ({info['dataDir']['bytes'] / 1e6:.1f} MB)",
        "disk       " + (f"FULL: {info['disk']['message']}" if info["disk"]["full"]
                         else f"{info['disk']['freeBytes'] / 1e6:.0f} MB free"),
    ]
    print("\n".join(lines))
    return 0 if info["worker"]["alive"] else 1


def notify_test_command(args):
    """Send a test message to each ANKISYNC_NOTIFY URL; exit status 1 unless all took it."""
    urls = settings().notify
    if not urls:
        raise ConfigError("ANKISYNC_NOTIFY is empty: set it (in data/.env, or"
                          " ANKISYNC_NOTIFY_FILE) to one or more Apprise URLs, such as"
                          " ntfy://ntfy.sh/YOUR-TOPIC, then run ./run.sh notify-test again")
    notify.check(urls)
    outcome = notify.send(urls, "ankisync: test message",
                          "This is a test from `./run.sh notify-test`: ankisync's alerts reach"
                          " you here.")
    for number, why in enumerate(outcome, 1):
        print(f"{notify.shown(urls, number)}: sent" if why is None else f"NOT SENT: {why}")
    if any(outcome):
        log.error("%s of %s notification URLs did not take the test message: check them in"
                  " ANKISYNC_NOTIFY", sum(1 for why in outcome if why), len(urls))
        return 1
    return 0


def backup_command(args):
    """A backup now, taken by the running worker (or, stopped, by this command)."""
    current = settings()

    def ask_worker(folder, request, expires):
        huey_tasks.init(current)
        huey_tasks.ask_backup(folder, request, expires)

    made = backup.backup(current, args.dir, ask_worker)
    if made is None:
        log.info("nothing changed since the last backup: nothing written")
        return
    log.info("backup written into %s", made["folder"])
    for path in made["files"]:
        print(path)


def restore_command(args):
    """Put backed-up files back into a stopped service."""
    current = settings()
    backup.restore(current, args.files)
    log.info("restored: start ankisync (./run.sh, or sudo systemctl start ankisync); it syncs"
             " before adding anything, so cards the server already has are not added twice")


def ask(prompt, secret=False):
    """An answer from the person at the terminal; None when there is none."""
    if not sys.stdin.isatty():
        return None
    return (getpass.getpass(prompt) if secret else input(prompt)).strip() or None


def check_voice(current, provider, keys):
    """Speak one short word now, so a bad key shows up here and not in the first card."""
    with tempfile.TemporaryDirectory() as scratch:
        tts.ensure_clip(Path(scratch), "ankisync", tts.voice_for(provider, current),
                        settings=current, keys=keys)


def read_key_file(path, flag="--google-key-file"):
    """The key from a --*-key-file flag: a file, or "-" for a line of stdin (never argv,
    which every user of the machine sees in ps)."""
    if not path:
        return None
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot read it ({error.strerror})") from None
    return text.strip() or None


def setup_command(args):
    """Sync login, voice and API key: from flags and environment, else by asking."""
    if args.google_key:
        raise ConfigError("--google-key shows the key to every user of this machine (ps):"
                          " put it in a file and use --google-key-file PATH, or pipe it with"
                          " --google-key-file -, or answer the prompt")
    current = settings()
    init_storage(current)
    log.info("ankisync setup, data dir %s", current.data_dir.resolve())
    setup_login(args, current)
    setup_voice(args, current)
    setup_api_key(args)
    log.info("setup done: start the service with ./run.sh")


def setup_login(args, current):
    """Log into the sync server when a username is given or typed; skipped otherwise."""
    username = args.username or os.environ.get("ANKISYNC_SETUP_USERNAME") or ask(
        f"{current.sync_endpoint or config.ANKIWEB} username (empty to skip): ")
    if username:
        password = os.environ.get("ANKISYNC_SETUP_PASSWORD") or read_password()
        do_login(username, password)


VOICES = ("auto", "google", "openai", "azure", "espeak", "none")


def setup_voice(args, current):
    """Choose the voice, try it once, and keep it (ANKISYNC_TTS, its settings, its key)."""
    voice = args.tts or ask("Voice: google, openai (or a compatible server such as"
                            " Kokoro-FastAPI), azure, espeak (offline) or none [auto]: ")
    voice = voice or current.tts
    if voice not in VOICES:
        raise ConfigError(f"--tts {voice!r}: expected " + ", ".join(VOICES))
    kept, keys = stored_credentials(), tts.keys(current)
    env, secrets = {}, {}  # kept once the voice worked: for DATA_DIR/.env, for credentials
    if voice in ("auto", "google"):
        keys["google"] = setup_google_key(args, current, voice, kept.get("google_api_key"))
        if keys["google"] and keys["google"] not in (current.google_api_key,
                                                     kept.get("google_api_key")):
            secrets["google_api_key"] = keys["google"]
    elif voice == "openai":
        current = setup_openai(args, current, keys, env, secrets)
    elif voice == "azure":
        current = setup_azure(args, current, keys, env, secrets)
    provider = tts.choose(voice, keys["google"])
    if provider:
        check_voice(current, provider, keys)
        log.info("voice %s works (%s)", provider, tts.describe(provider, current, keys))
    else:
        log.warning("no voice: cards will be made without audio")
    if secrets:
        credentials.update(config.credentials_path(current), **secrets)
    if voice != current.tts:
        env["ANKISYNC_TTS"] = voice
    if env:
        config.update_env_file(current.data_dir / ".env", **env)


def _setting(current, env, name, value):
    """current with setting name set to value, noted for .env when it changes."""
    attribute = name.removeprefix("ANKISYNC_").lower()
    if value != getattr(current, attribute):
        env[name] = value
        current = current._replace(**{attribute: value})
    return current


def setup_openai(args, current, keys, env, secrets):
    """An OpenAI-compatible server: its URL, key (none for most local servers), model, voice."""
    base = args.openai_base_url or current.openai_tts_base_url or ask(
        "OpenAI-compatible server URL (https://api.openai.com, or e.g. http://127.0.0.1:8880"
        " for Kokoro-FastAPI): ")
    if not base:
        raise ConfigError("--tts openai needs the server's URL: --openai-base-url URL, or"
                          " ANKISYNC_OPENAI_TTS_BASE_URL")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--openai-base-url {base!r}: expected a URL starting with http://"
                          " or https://, e.g. http://127.0.0.1:8880")
    current = _setting(current, env, "ANKISYNC_OPENAI_TTS_BASE_URL", base)
    current = _setting(current, env, "ANKISYNC_OPENAI_TTS_MODEL",
                       args.openai_model or current.openai_tts_model)
    current = _setting(current, env, "ANKISYNC_OPENAI_TTS_VOICE",
                       args.voice or current.openai_tts_voice)
    key = read_key_file(args.openai_key_file, "--openai-key-file")
    if key is None and not keys["openai"]:
        key = ask("Its API key (empty for none: local servers want none): ", secret=True)
    if key and key != keys["openai"]:
        keys["openai"] = secrets["openai_tts_api_key"] = key
    return current


def setup_azure(args, current, keys, env, secrets):
    """Azure Speech: the resource's region (or an endpoint), its key, the voice."""
    endpoint = args.azure_endpoint or current.azure_tts_endpoint
    region = args.azure_region or current.azure_tts_region or (None if endpoint else ask(
        "Azure Speech resource region (e.g. westeurope): "))
    if not (region or endpoint):
        raise ConfigError("--tts azure needs the Speech resource's region: --azure-region NAME"
                          " (or ANKISYNC_AZURE_TTS_REGION, or ANKISYNC_AZURE_TTS_ENDPOINT)")
    if region and not re.fullmatch(r"[a-z0-9]+", region):
        raise ConfigError(f"--azure-region {region!r}: expected a region name such as westeurope")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"--azure-endpoint {endpoint!r}: expected a URL starting with https://")
    current = _setting(current, env, "ANKISYNC_AZURE_TTS_REGION", region)
    current = _setting(current, env, "ANKISYNC_AZURE_TTS_ENDPOINT", endpoint)
    current = _setting(current, env, "ANKISYNC_AZURE_TTS_VOICE",
                       args.voice or current.azure_tts_voice)
    key = read_key_file(args.azure_key_file, "--azure-key-file") or keys["azure"] or ask(
        "Azure Speech key: ", secret=True)
    if not key:
        raise ConfigError("--tts azure needs the Speech resource's key: --azure-key-file PATH"
                          " (- for stdin), ANKISYNC_AZURE_TTS_KEY_FILE, or the prompt at a"
                          " terminal")
    if key != keys["azure"]:
        keys["azure"] = secrets["azure_tts_key"] = key
    return current


def setup_google_key(args, current, voice, stored_key):
    """The Google key: --google-key-file, the settings or credentials, else asked for."""
    key = read_key_file(args.google_key_file) or current.google_api_key or stored_key
    if voice in ("auto", "google") and not key:
        key = ask("Google text-to-speech API key (empty to skip): ", secret=True)
        if key is None and voice == "google":
            raise ConfigError("--tts google needs a key: --google-key-file PATH (- for stdin),"
                              " ANKISYNC_GOOGLE_API_KEY_FILE, or the prompt at a terminal")
    return key


def setup_api_key(args):
    """A new API key on the first setup, with --new-api-key, or when asked for one."""
    have_key = "api_key_sha256" in stored_credentials()
    new_key = args.new_api_key or not have_key or (
        (ask("Make a new API key for clients (old tokens stop working)? [y/N] ") or "n")
        .lower().startswith("y"))
    if new_key:
        make_api_key()


def parse_args(argv, app):
    parser = argparse.ArgumentParser(
        prog="./run.sh",
        description="ankisync: an HTTP API that turns a word into an Anki cloze card with audio.",
        epilog="Settings (environment or DATA_DIR/.env):\n" + config.reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ankisync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API").set_defaults(
        run=functools.partial(serve, app=app))
    commands.add_parser("worker", help="run the Huey worker").set_defaults(run=run_worker)
    login_parser = commands.add_parser("login", help="log into AnkiWeb or the sync server")
    login_parser.add_argument("username")
    login_parser.set_defaults(run=login_command)
    key_parser = commands.add_parser("api-key", help="make a new API key, print it once")
    key_parser.add_argument("--if-missing", action="store_true",
                            help="only when none exists yet (first start)")
    key_parser.set_defaults(run=api_key_command)
    setup_parser = commands.add_parser(
        "setup", help="sync login, voice, API key: asks, or takes flags for scripts",
        description="Each answer may come from a flag or the environment; what is"
                    " missing is asked when a person is at the terminal, else skipped."
                    " The password comes from ANKISYNC_SETUP_PASSWORD or stdin.")
    setup_parser.add_argument("--username", help="sync login (or ANKISYNC_SETUP_USERNAME)")
    setup_parser.add_argument("--tts", choices=VOICES,
                              help="voice; stored as ANKISYNC_TTS in DATA_DIR/.env")
    setup_parser.add_argument("--voice", metavar="NAME", help="voice name for --tts openai"
                                                             " or azure (alloy, en-US-JennyNeural)")
    setup_parser.add_argument("--openai-base-url", metavar="URL",
                              help="OpenAI-compatible server (https://api.openai.com,"
                                   " http://127.0.0.1:8880 for Kokoro-FastAPI)")
    setup_parser.add_argument("--openai-model", metavar="NAME", help="its model (tts-1, kokoro)")
    setup_parser.add_argument("--openai-key-file", metavar="PATH",
                              help="file holding its API key (- reads a line of stdin)")
    setup_parser.add_argument("--azure-region", metavar="NAME", help="Azure Speech region")
    setup_parser.add_argument("--azure-endpoint", metavar="URL",
                              help="Azure speech URL instead of the region's")
    setup_parser.add_argument("--azure-key-file", metavar="PATH",
                              help="file holding the Azure Speech key (- reads a line of stdin)")
    setup_parser.add_argument("--google-key-file", metavar="PATH",
                              help="file holding the Google TTS API key (- reads a line of"
                                   " stdin, after the password); stored in credentials")
    setup_parser.add_argument("--google-key", help=argparse.SUPPRESS)  # refused: see below
    setup_parser.add_argument("--new-api-key", action="store_true",
                              help="make a new API key even if one exists")
    setup_parser.set_defaults(run=setup_command)
    status_parser = commands.add_parser("status", help="worker, queue, jobs, last sync")
    status_parser.add_argument("--json", action="store_true", help="for scripts")
    status_parser.set_defaults(run=status_command)
    commands.add_parser("notify-test", help="send a test alert to ANKISYNC_NOTIFY").set_defaults(
        run=notify_test_command)
    backup_parser = commands.add_parser(
        "backup", help="back up the job database and the collection, even while running",
        description="Writes DIR/TIME-jobs.db and DIR/TIME-collection.colpkg, only when"
                    " something changed since the last backup there, and keeps the newest"
                    " ANKISYNC_BACKUP_KEEP. A relative DIR is taken from the ankisync folder.")
    backup_parser.add_argument("dir", nargs="?", metavar="DIR",
                               help="where to write (default: ANKISYNC_BACKUP_DIR,"
                                    " else DATA_DIR/backups)")
    backup_parser.set_defaults(run=backup_command)
    restore_parser = commands.add_parser(
        "restore", help="put back a backup, into a stopped service",
        description="Each FILE is a TIME-jobs.db or TIME-collection.colpkg made by"
                    " ./run.sh backup (a .colpkg exported from Anki works too). The files"
                    " they replace are moved into DATA_DIR/replaced-TIME.")
    restore_parser.add_argument("files", nargs="+", metavar="FILE")
    restore_parser.set_defaults(run=restore_command)
    return parser.parse_args(argv)


def stderr_is_journal():
    """Whether stderr goes to journald (JOURNAL_STREAM names it; shells may inherit it)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{status.st_dev}:{status.st_ino}" == f"{device}:{inode}"


def setup_logging(level):
    # journald stamps each line itself; elsewhere a time helps
    stamp = "" if stderr_is_journal() else "%(asctime)s "
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=stamp + "%(levelname)s %(name)s: %(message)s")


def main(argv, app):
    """Run the command argv names (serve runs app); the process's exit status."""
    args = parse_args(argv, app)
    try:
        current = settings()  # first: the log level is one of them, from .env too
    except ConfigError as error:
        setup_logging("INFO")
        log.error("%s", error)
        return 1
    setup_logging(current.log_level)
    if current.google_application_credentials:  # Google's library reads it from here
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = current.google_application_credentials
    # With RUST_BACKTRACE=1 in the environment, anki's backend captures and symbolizes
    # a backtrace for every error it makes, even one it expects (a config key not yet
    # set, at each collection open): ~50 MB of debug data kept in the worker, for a
    # trace nobody reads. Its errors reach us as messages; a panic keeps its backtrace.
    os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # now, not at exit: a reader that left (`| head`) is no error
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except AnkisyncError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130
