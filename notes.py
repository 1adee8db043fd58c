"""The card's fields, the "Custom Cloze" note type, and adding a card's note once.

The web process reads CARD_FIELDS to validate a card: `anki` is imported inside
functions (as tts.py does with google.cloud), so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections import namedtuple
from pathlib import Path
from typing import TYPE_CHECKING

import errors

if TYPE_CHECKING:
    from anki.collection import Collection
    from anki.decks import DeckId
    from anki.models import NotetypeDict
    from anki.notes import NoteId

log = logging.getLogger(__name__)

NOTETYPE_NAME = "Custom Cloze"
FIELDS = (
    "Text", "Word", "TextTranslation", "EnDefinition", "DefinitionTranslation",
    "PartOfSpeech", "CefrLevel", "Code", "GuideWord", "DefinitionAudio", "TextAudio",
)
REQUIRED_FIELDS = ("Text", "Word")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "custom_cloze"

# The card's nine fields, the one table of them: the API's name, the note's
# field, whether a card must have it, and the longest value accepted. The web
# app validates with it, the note is filled from it, openapi.py describes it.
CardField = namedtuple("CardField", "name field required longest")
CARD_FIELDS = (
    CardField("word", "Word", True, 200),
    CardField("partOfSpeech", "PartOfSpeech", False, 100),
    CardField("guideWord", "GuideWord", False, 200),
    CardField("englishDefinition", "EnDefinition", False, 2000),
    CardField("definitionTranslation", "DefinitionTranslation", False, 2000),
    CardField("cefrLevel", "CefrLevel", False, 20),
    CardField("code", "Code", False, 100),
    CardField("englishExample", "Text", True, 2000),
    CardField("exampleTranslation", "TextTranslation", False, 2000),
)

# NoteFieldsCheckResult's names -> what to fix
_CHECK_MESSAGES = {
    "EMPTY":
        "englishExample is empty: send the example sentence with the hidden word "
        "marked like {{c1::word}}",
    "MISSING_CLOZE":
        "englishExample has no cloze: mark the hidden word like {{c1::word}}",
    "NOTETYPE_NOT_CLOZE":
        f"the note type {NOTETYPE_NAME!r} in the collection is not a cloze type: "
        "rename it in Anki so ankisync can create its own",
    "FIELD_NOT_CLOZE":
        "only englishExample may hold cloze markers like {{c1::word}}: "
        "remove them from the other fields",
}


def _new_notetype(col: Collection) -> NotetypeDict:
    from anki.consts import MODEL_CLOZE
    models = col.models
    notetype = models.new(NOTETYPE_NAME)
    notetype["type"] = MODEL_CLOZE
    for name in FIELDS:
        models.add_field(notetype, models.new_field(name))
    # the browser's sort column shows the word rather than the sentence
    models.set_sort_index(notetype, FIELDS.index("Word"))
    template = models.new_template("Cloze")
    template["qfmt"] = (TEMPLATE_DIR / "front.html").read_text(encoding="utf-8")
    template["afmt"] = (TEMPLATE_DIR / "back.html").read_text(encoding="utf-8")
    models.add_template(notetype, template)
    notetype["css"] = (TEMPLATE_DIR / "style.css").read_text(encoding="utf-8")
    added = models.add_dict(notetype)
    log.info("created note type %r", NOTETYPE_NAME)
    return models.get(added.id)


def ensure_notetype(col: Collection) -> NotetypeDict:
    """The "Custom Cloze" note type, created when the collection has none."""
    notetype = col.models.by_name(NOTETYPE_NAME)
    if notetype is None:
        return _new_notetype(col)
    present = col.models.field_names(notetype)
    missing = [name for name in REQUIRED_FIELDS if name not in present]
    if missing:
        raise errors.BadNote(
            f"the collection already has a note type named {NOTETYPE_NAME!r} without "
            f"the field(s) {', '.join(missing)}: rename that note type in Anki, sync, "
            "and ankisync will create its own")
    # Adding our other fields would force a full sync on every device: the
    # note fills only the fields this type has.
    return notetype


def ensure_deck(col: Collection, name: str) -> DeckId:
    """The id of the deck called name, created when missing."""
    from anki.decks import DeckId
    deck_id = DeckId(col.decks.add_normal_deck_with_name(name).id)
    if col.decks.get(deck_id)["dyn"]:  # Anki gives a filtered deck of that name back
        raise errors.BadNote(f"the deck {name!r} is a filtered deck, which holds no notes of"
                             " its own: send another deck name")
    return deck_id


def note_guid(job_id: str) -> str:
    """The guid of a job's note: the same job always gives the same note."""
    from anki.utils import base91
    digest = hashlib.sha256(f"ankisync:{job_id}".encode()).digest()
    # 64 bits in base91, like the guids Anki makes itself
    return base91(int.from_bytes(digest[:8], "big"))


def _find_note(col: Collection, job_id: str) -> NoteId | None:
    return col.db.scalar("select id from notes where guid=?", note_guid(job_id))


def has_note(col: Collection, job_id: str) -> bool:
    """True if the job's note is in the collection."""
    return _find_note(col, job_id) is not None


def _field_values(card: dict, word_clip: str | None, text_clip: str | None) -> dict[str, str]:
    values = {field.field: card.get(field.name) or "" for field in CARD_FIELDS}
    values["DefinitionAudio"] = f"[sound:{word_clip}]" if word_clip else ""
    values["TextAudio"] = f"[sound:{text_clip}]" if text_clip else ""
    return values


def add_card(col: Collection, job_id: str, card: dict, deck: str,
             word_clip: str | None, text_clip: str | None,
             tags: tuple | list = ()) -> tuple[int, list[int]]:
    """Add the job's note unless it is there already; return (note id, card ids).

    card holds the API request's keys; word_clip and text_clip are names of
    files already in the media folder (the spoken word and sentence); the note
    goes to the deck named deck (created when missing) with tags.
    """
    from anki.notes import NoteFieldsCheckResult
    existing = _find_note(col, job_id)
    if existing is not None:
        return existing, list(col.card_ids_of_note(existing))
    notetype = ensure_notetype(col)
    note = col.new_note(notetype)
    note.guid = note_guid(job_id)
    note.tags = list(tags)
    values = _field_values(card, word_clip, text_clip)
    for name in col.models.field_names(notetype):
        if name in values:
            note[name] = values[name]
    state = note.fields_check()
    # A duplicate sentence is allowed, as in Anki itself: the same sentence may
    # serve two words, and a re-applied note must never be refused for it.
    if state not in (NoteFieldsCheckResult.NORMAL, NoteFieldsCheckResult.DUPLICATE):
        raise errors.BadNote(_CHECK_MESSAGES.get(NoteFieldsCheckResult.Name(state),
                                                 f"Anki refused the note ({state})"))
    col.add_note(note, ensure_deck(col, deck))
    return note.id, list(note.card_ids())
