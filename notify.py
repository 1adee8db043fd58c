"""Alerts: a message when a person is needed, sent to the Apprise URLs of ANKISYNC_NOTIFY.

The causes: a job failed for good, the sync server refused the saved login,
syncs have failed for more than an hour, the collection needed a full download.
Each cause is announced at most once an hour, and when it was last announced is
kept in the job database, so a worker that restarts in a loop does not repeat it.

Worker and CLI only: `apprise` is imported where a message is sent, so the web
process (which imports huey_tasks, and so this module) never loads it. Sending
runs in a thread of its own: a job only puts its alert on a queue, and a
notifier that hangs or refuses is logged and never delays or fails a job.
"""

import json
import logging
import queue
import threading
import time

import config
import db
from errors import ConfigError, SyncAuthError

log = logging.getLogger(__name__)

PER_CAUSE = 3600  # seconds: one message per cause at most in that time
FAILING_FOR = 3600  # seconds of failed syncs (none succeeding) before that is announced
SEND_TIMEOUT = 30  # seconds one message may take, all its URLs together
TITLE = {
    "job_failed": "ankisync: a card failed",
    "login_refused": "ankisync: the sync login was refused",
    "sync_failing": "ankisync: syncs have failed for over an hour",
    "full_download": "ankisync: the collection was replaced by the sync server's copy",
}


def shown(urls, number):
    """How URL `number` (from 1) appears in logs and output: its scheme only, as a URL's
    host, user, password and path may all be tokens (Telegram's bot token is its host)."""
    return f"URL {number} ({urls[number - 1].partition('://')[0]}://...)"


def _apprise():
    import apprise
    # Its own log lines may quote a URL with its token: ours say what failed instead.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    return apprise


def check(urls):
    """Stop at start when a URL names no service Apprise knows (ConfigError)."""
    if not urls:
        return
    apprise = _apprise()
    for number in range(1, len(urls) + 1):
        if apprise.Apprise.instantiate(urls[number - 1]) is None:
            raise ConfigError(
                f"ANKISYNC_NOTIFY: {shown(urls, number)} is not a notification URL Apprise can"
                " use (unknown service, or a part missing): see Apprise's list of services,"
                " e.g. ntfy://ntfy.sh/TOPIC, tgram://BOTTOKEN/CHATID, json://HOST/PATH")


def send(urls, title, body, timeout=SEND_TIMEOUT):
    """Send one message to every URL now; [None for each that took it, else why not]."""
    apprise = _apprise()
    outcome = []
    for number, url in enumerate(urls, 1):
        target = apprise.Apprise()
        if not target.add(url):
            outcome.append(f"{shown(urls, number)} is not a URL Apprise can use")
            continue
        try:
            result = target.notify(body=body, title=title, timeout=timeout)
        except Exception as error:  # a plugin's bug: this URL failed, the others go on
            outcome.append(f"{shown(urls, number)}: {type(error).__name__}")
            continue
        status = apprise.AppriseResultStatus
        outcome.append(None if result else f"{shown(urls, number)}: "
                       + ("no answer within %g s" % timeout if result.status == status.TIMEOUT
                          else "refused or unreachable"))
    return outcome


def claim(path, cause, now, every=PER_CAUSE):
    """Take the cause's turn to be announced: (whether it may be, when it last was)."""
    key = f"notified_{cause}"
    with db.write(path) as conn:
        row = conn.execute("SELECT value FROM ankisync_state WHERE key = ?", (key,)).fetchone()
        last = float(row[0]) if row else None
        if last is not None and 0 <= now - last < every:
            return False, last
        conn.execute("INSERT OR REPLACE INTO ankisync_state VALUES (?, ?)", (key, str(now)))
    return True, last


def unclaim(path, cause, last):
    """Give the turn back (the message did not go out): the next occurrence tries again."""
    key = f"notified_{cause}"
    with db.write(path) as conn:
        if last is None:
            conn.execute("DELETE FROM ankisync_state WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO ankisync_state VALUES (?, ?)", (key, str(last)))


class Notifier:
    """The worker's alerts: the events come in from the job's path, a thread sends them.

    One per worker process (made by the start-up hook); with no URLs set it
    does nothing at all, not even start its thread.
    """

    def __init__(self, settings):
        self.urls = settings.notify
        self.db = config.db_path(settings)
        endpoint = settings.sync_endpoint
        self.server = f"the sync server at {endpoint}" if endpoint else config.ANKIWEB
        self._events = queue.SimpleQueue()
        self._thread = None
        self._lock = threading.Lock()

    # --- the events, from the job's path: each only queued ---

    def job_failed(self, job, error_type, message):
        """A job failed for good."""
        self._put("job", dict(job), error_type, message)

    def sync_done(self, outcome):
        """A sync succeeded: {"outcome": ...}, as Worker.sync records it."""
        self._put("synced", outcome.get("outcome"))

    def sync_failed(self, error):
        self._put("sync_error", type(error).__name__, str(error),
                  isinstance(error, SyncAuthError))

    def _put(self, *event):
        if not self.urls:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
                self._thread.start()
        self._events.put((time.time(), *event))

    def close(self, timeout=5.0):
        """Let the queued alerts go out, waiting at most timeout seconds (worker shutdown)."""
        if self._thread is not None and self._thread.is_alive():
            self._events.put(None)
            self._thread.join(timeout)

    # --- the thread: what each event means, and the sending ---

    def _run(self):
        while (event := self._events.get()) is not None:
            try:
                self._handle(*event)
            except Exception:  # the boundary of alerts: logged, never a job's failure
                log.exception("could not handle an alert (%s)", event[1])

    def _handle(self, at, kind, *details):
        if kind == "job":
            job, error_type, message = details
            if error_type == "SyncAuthError":  # the login alert says it, with its fix
                self._login_refused(at, message)
                return
            self._job_failed(at, job, error_type, message)
        elif kind == "synced":
            outcome, = details
            if db.get_state(self.db, "sync_failing_since"):
                db.set_state(self.db, sync_failing_since="")
            if outcome == "downloaded":
                self.alert("full_download", at, (
                    f"The collection could not be merged with the copy on {self.server} (a change"
                    " that needs a full sync, such as a field added to a note type on another"
                    " device), so ankisync downloaded the server's copy and added back the cards"
                    " it did not have yet. Check on your phone that your recent cards are there"
                    " after its next sync; `./run.sh status` and the worker's log say more."))
        elif kind == "sync_error":
            error_type, message, refused = details
            if refused:
                self._login_refused(at, message)
                return
            since = float(db.get_state(self.db, "sync_failing_since") or 0)
            if not since:
                db.set_state(self.db, sync_failing_since=str(at))
            elif at - since > FAILING_FOR:
                self.alert("sync_failing", at, (
                    f"Every sync with {self.server} has failed since"
                    f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(since))}. The last"
                    f" error: {message} Cards are kept here and go up with the first sync that"
                    " works: check the network and the sync server (ANKISYNC_SYNC_ENDPOINT);"
                    " `./run.sh status` shows the last error."))

    def _login_refused(self, at, message):
        self.alert("login_refused", at, (
            f"The saved sync login was refused by {self.server} ({message}). Cards are kept here but"
            " reach no other device until you log in again: run `./run.sh login USER` on the"
            " server, USER being your sync account's name."))

    def _job_failed(self, at, job, error_type, message):
        word = json.loads(job.get("request") or "{}").get("word") or "?"
        self.alert("job_failed", at, (
            f"The card for \u201c{word}\u201d failed for good ({error_type}): {message}\n"
            f"Once its cause is fixed, retry it from the status page (/ui/) or with"
            f" POST /api/v1/tasks/{job['id']}/retry. More failures within the hour are not"
            " announced again: `./run.sh status` counts them."))

    def alert(self, cause, at, body):
        """Send the cause's message unless it went out within the hour; logged either way."""
        allowed, last = claim(self.db, cause, at)
        if not allowed:
            log.info("alert %s not sent: one went out %.0f s ago (at most one an hour)",
                     cause, at - last)
            return
        failures = [why for why in send(self.urls, TITLE[cause], body) if why]
        if failures:
            if len(failures) == len(self.urls):
                unclaim(self.db, cause, last)  # none went out: the next occurrence tries again
            log.warning("alert %s: could not notify: %s", cause, "; ".join(failures))
        else:
            log.info("alert %s sent to %s", cause,
                     ", ".join(shown(self.urls, n) for n in range(1, len(self.urls) + 1)))
