"""The duplicate index: which notes already hold a word (GET /api/v1/notes, onDuplicate).

The web process never opens the collection, so the worker keeps a small copy of
what a duplicate check needs in the job database: one row per note of the
"Custom Cloze" type, keyed by its word normalised (key()). The worker writes a
row when it adds a note, removes rows when AnkiConnect deletes notes, and
compares the collection with the table after a sync that changed the notes (a
pull from another device, a full download) and when it opens the collection
(a restored backup, an upgrade): then only the rows that differ are written.
Between those moments the table can lag behind the collection (a note edited
on the phone shows once the worker next syncs).
"""

import html
import json
import logging
import re
import time
import unicodedata

import db
import jobs
import notes

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ankisync_notes (
    note_id INTEGER PRIMARY KEY,     -- the note's id in the collection (ms since the epoch)
    word TEXT NOT NULL,              -- its Word field as key() gives it
    guid TEXT NOT NULL,
    deck TEXT NOT NULL,              -- the deck of its first card
    sentence TEXT NOT NULL,          -- its Text field, HTML as in the note
    created REAL NOT NULL,           -- seconds since the epoch
    job_id TEXT                      -- the job that made it, when ankisync did
);
CREATE INDEX IF NOT EXISTS ankisync_notes_word ON ankisync_notes (word);
"""
STATE_KEY = "notes_index"  # ankisync_state: the collection's fingerprint the table matches
RULES = ("allow", "refuse")  # a card's onDuplicate; allow is the default
LONGEST_WORD = next(field.longest for field in notes.CARD_FIELDS if field.name == "word")
CHUNK = 1000  # rows per write transaction: Huey and the web process get the lock in between
TAG = re.compile(r"<[^>]*>")


def init(path):
    db.connect(path).executescript(SCHEMA)


def key(word):
    """The form words are compared in: NFC, case-folded, blanks trimmed and runs of them one."""
    return " ".join(unicodedata.normalize("NFC", word).casefold().split())


def field_key(value):
    """key() of a field's HTML (a note's Word, a card's word): tags dropped, entities read."""
    return key(html.unescape(TAG.sub("", value)))


class Held(Exception):
    """The word is in the collection already, or in a job not yet finished."""

    def __init__(self, note_ids, task_ids):
        super().__init__(note_ids, task_ids)
        self.note_ids, self.task_ids = note_ids, task_ids


# --- the web process: read only --------------------------------------------------

def lookup(path, word):
    """The notes that hold word, oldest first: dicts for the API."""
    rows = db.connect(path).execute(
        "SELECT n.note_id, n.deck, n.sentence, n.created, j.id AS job_id FROM ankisync_notes n"
        " LEFT JOIN ankisync_jobs j ON j.id = n.job_id WHERE n.word = ? ORDER BY n.note_id",
        (key(word),)).fetchall()
    return [{"noteId": row["note_id"], "deck": row["deck"], "sentence": row["sentence"],
             "created": jobs.iso(row["created"]), "taskId": row["job_id"]} for row in rows]


def refuse_held(word):
    """A check for jobs.create: raises Held when word has a note or an unfinished job.

    It runs in the transaction that inserts the job (BEGIN IMMEDIATE), so two
    requests for one new word cannot both pass it.
    """
    wanted = field_key(word)

    def check(conn):
        note_ids = [row[0] for row in conn.execute(
            "SELECT note_id FROM ankisync_notes WHERE word = ? ORDER BY note_id", (wanted,))]
        marks = ", ".join("?" * len(jobs.UNFINISHED))
        task_ids = [job_id for job_id, held in conn.execute(
            "SELECT id, json_extract(request, '$.word') FROM ankisync_jobs WHERE kind = 'cloze'"
            f" AND status IN ({marks}) ORDER BY created_at", jobs.UNFINISHED)
            if isinstance(held, str) and field_key(held) == wanted]
        if note_ids or task_ids:
            raise Held(note_ids, task_ids)
    return check


# --- the worker: it alone writes -------------------------------------------------

def record(path, made):
    """Index notes the worker just added: [(job id, card, job result)], one transaction."""
    if not made:
        return
    rows = [(result["noteId"], field_key(card["word"]), notes.note_guid(job_id),
             result.get("deck") or "", card["englishExample"], result["noteId"] / 1000, job_id)
            for job_id, card, result in made]
    with db.write(path) as conn:
        conn.executemany("INSERT OR REPLACE INTO ankisync_notes (note_id, word, guid, deck,"
                         " sentence, created, job_id) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def forget(path, note_ids):
    """Drop deleted notes from the index (AnkiConnect's deletions: ankiconnect.deletions)."""
    with db.write(path) as conn:
        conn.executemany("DELETE FROM ankisync_notes WHERE note_id = ?",
                         [(note_id,) for note_id in note_ids])


def fingerprint(col):
    """What moves when the Custom Cloze notes, their cards' decks or deck names change.

    A few aggregate reads (milliseconds at 10,000 notes), so that a sync that
    brought nothing costs no comparison of every note.
    """
    mid = col.models.id_for_name(notes.NOTETYPE_NAME)
    if mid is None:
        return []
    # sum(), not total(): whole numbers, exact (a float loses the ids' low digits)
    return [*col.db.first("select count(), coalesce(sum(mod), 0), coalesce(sum(id), 0) from"
                          " notes where mid = ?", mid),
            *col.db.first("select count(), coalesce(sum(did), 0) from cards where nid in"
                          " (select id from notes where mid = ?)", mid),
            *col.db.first("select count(), coalesce(sum(mtime_secs), 0) from decks")]


def notes_of(col):
    """{note id: (word key, guid, deck, sentence, created)} of the collection's Custom Cloze notes."""
    notetype = col.models.by_name(notes.NOTETYPE_NAME)
    if notetype is None:
        return {}
    names = col.models.field_names(notetype)
    if "Word" not in names:
        return {}
    word, text = names.index("Word"), names.index("Text") if "Text" in names else None
    decks = {deck.id: deck.name for deck in col.decks.all_names_and_ids()}
    found = {}
    for note_id, guid, fields, deck_id in col.db.execute(
            "select n.id, n.guid, n.flds, (select did from cards where nid = n.id order by ord"
            " limit 1) from notes n where n.mid = ?", notetype["id"]):
        fields = fields.split("\x1f")
        found[note_id] = (field_key(fields[word]) if word < len(fields) else "", guid,
                          decks.get(deck_id, ""),
                          fields[text] if text is not None and text < len(fields) else "",
                          note_id / 1000)
    return {note_id: row for note_id, row in found.items() if row[0]}


def refresh(path, col):
    """Make the index match the collection, writing only the rows that differ."""
    started = time.monotonic()
    wanted = notes_of(col)
    held = {row[0]: tuple(row[1:]) for row in db.connect(path).execute(
        "SELECT note_id, word, guid, deck, sentence, created FROM ankisync_notes")}
    changed = [(note_id, *row) for note_id, row in wanted.items() if held.get(note_id) != row]
    gone = [(note_id,) for note_id in held.keys() - wanted.keys()]
    if changed:
        # a note new to the index gets its job's id, when a job of ours made it
        new_guids = {row[2] for row in changed if row[0] not in held}
        ours = {}
        if new_guids:
            ours = {guid: job["id"] for job in jobs.added(path)
                    if (guid := notes.note_guid(job["id"])) in new_guids}
        changed = [(*row, ours.get(row[2])) for row in changed]
    for start in range(0, max(len(changed), len(gone)), CHUNK):
        with db.write(path) as conn:
            conn.executemany(
                "INSERT INTO ankisync_notes (note_id, word, guid, deck, sentence, created,"
                " job_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (note_id) DO UPDATE SET"
                " word = excluded.word, guid = excluded.guid, deck = excluded.deck,"
                " sentence = excluded.sentence, created = excluded.created",
                changed[start:start + CHUNK])
            conn.executemany("DELETE FROM ankisync_notes WHERE note_id = ?",
                             gone[start:start + CHUNK])
    db.set_state(path, **{STATE_KEY: json.dumps(fingerprint(col))})
    log.info("duplicate index: %s notes, %s written, %s removed in %.2fs", len(wanted),
             len(changed), len(gone), time.monotonic() - started)


def on_open(path, col):
    """The collection was opened: refresh the index if the collection changed meanwhile
    (a restored backup, a first start with this index, a worker killed mid-batch, an
    AnkiConnect change not yet synced)."""
    stored = db.get_state(path, STATE_KEY)
    if stored is None or json.loads(stored) != fingerprint(col):
        refresh(path, col)


def after_sync(path, col, before, outcome):
    """Index what a sync brought (other devices' changes, a whole collection), and what
    an AnkiConnect client changed before it (mark_stale)."""
    if stale(path):
        refresh(path, col)
        return
    if outcome == "no_changes":
        return
    after = fingerprint(col)
    if outcome == "downloaded" or after != before:
        refresh(path, col)
    else:  # nothing of the notes moved: the index is as right as it was
        db.set_state(path, **{STATE_KEY: json.dumps(after)})


def holds(col, note_ids):
    """Whether any of the notes is of the note type the index holds (Custom Cloze)."""
    mid = col.models.id_for_name(notes.NOTETYPE_NAME)
    if mid is None:
        return False
    for start in range(0, len(note_ids), CHUNK):  # within SQLite's count of ? per query
        chunk = note_ids[start:start + CHUNK]
        if col.db.scalar(f"select exists (select 1 from notes where mid = ? and id in"
                         f" ({', '.join('?' * len(chunk))}))", mid, *chunk):
            return True
    return False


def mark_stale(path):
    """An AnkiConnect client changed the collection: the next sync (or start) compares it all.

    Cheaper than following each of its actions: they are few next to cards.
    """
    if not stale(path):
        with db.write(path) as conn:
            conn.execute("DELETE FROM ankisync_state WHERE key = ?", (STATE_KEY,))


def stale(path):
    """Whether the index must be compared with the whole collection (or was never built)."""
    return db.get_state(path, STATE_KEY) is None
