"""The problems ankisync expects, each with a message a person can act on.

The error boundary of each process (the web app, the worker's task) turns these
into JSON answers or failed jobs; everything inside just raises. A job's error
`type` is the class name.
"""


class AnkisyncError(Exception):
    """An expected problem; str(error) says what to do about it."""


class ConfigError(AnkisyncError):
    """A setting is missing or malformed."""


class PermanentError(AnkisyncError):
    """Retrying will not help until a person acts."""


class TransientError(AnkisyncError):
    """Worth retrying later: network trouble, a server error, a busy server."""


class BadNote(PermanentError):
    """Anki refused the note (no cloze, empty text)."""


class SyncAuthError(PermanentError):
    """The sync server refused the login or the saved session."""


class SyncUnavailable(TransientError):
    """The sync server could not be reached or answered with a server error."""


class TTSRefused(PermanentError):
    """The text-to-speech service refused the request (bad key, bad voice)."""


class TTSUnavailable(TransientError):
    """The text-to-speech service failed or timed out."""


class AlreadyRunning(AnkisyncError):
    """Another ankisync process holds this data dir."""


class DamagedFile(AnkisyncError):
    """A file of the data dir cannot be read; the message names it and the fix."""


class BackupFailed(AnkisyncError):
    """A backup could not be taken; the message says why."""


class TaskTimedOut(PermanentError):
    """The job ran past ANKISYNC_TASK_TIMEOUT before its note was added."""
    kind = "TimeoutError"


class SyncTimedOut(TransientError):
    """The job ran past ANKISYNC_TASK_TIMEOUT after its note was added: sync again."""
    kind = "TimeoutError"


class WorkerTrouble(TransientError):
    """An OS or database error escaped the job (a full disk, a locked collection)."""


class WordAudioRefused(PermanentError):
    """A card's wordAudioUrl is not allowed, not found, too big or not audio."""


class WordAudioUnavailable(TransientError):
    """A card's wordAudioUrl did not answer in time, or its server failed."""
