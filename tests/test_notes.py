"""notes.py: a card becomes exactly one note of the right type, or a BadNote
that says what to fix; in a real collection, no sync involved."""

import pytest

import errors
import notes
from test_ankiweb import CARD, DECK, col  # noqa: F401 (col is a fixture)


def test_same_job_twice_makes_one_note(col):
    first = notes.add_card(col, "job-x", CARD, DECK, "w.mp3", "t.mp3")
    second = notes.add_card(col, "job-x", CARD, DECK, "w.mp3", "t.mp3")
    assert first == second
    assert col.note_count() == 1


def test_text_without_cloze_is_bad_note(col):
    with pytest.raises(errors.BadNote, match=r"no cloze.*\{\{c1::word\}\}"):
        notes.add_card(col, "job-y", dict(CARD, englishExample="No gap here."), DECK, None, None)
    assert col.note_count() == 0


def test_existing_notetype_with_fewer_fields_is_used_as_is(col):
    models = col.models
    notetype = models.by_name("Cloze")  # a cloze type with Text and Back Extra
    notetype = models.copy(notetype, add=False)
    notetype["name"] = "Custom Cloze"
    models.add_field(notetype, models.new_field("Word"))
    models.add_dict(notetype)

    note_id, _ = notes.add_card(col, "job-z", CARD, DECK, "w.mp3", None)

    note = col.get_note(note_id)
    assert dict(note.items()) == {"Text": CARD["englishExample"], "Back Extra": "",
                                  "Word": CARD["word"]}


def test_existing_notetype_without_word_is_bad_note(col):
    notetype = col.models.copy(col.models.by_name("Cloze"), add=False)
    notetype["name"] = "Custom Cloze"
    col.models.add_dict(notetype)
    with pytest.raises(errors.BadNote, match="rename"):
        notes.add_card(col, "job-w", CARD, DECK, None, None)

