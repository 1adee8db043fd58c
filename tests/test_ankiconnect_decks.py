"""AnkiConnect's deck actions and deleteNotes/changeDeck, through the worker's port."""

from anki_server import download_collection, notes_in, seed_other_device
from test_ankiconnect import Client, ac, basic, keyed, start_with_ankiconnect  # noqa: F401 (fixtures)

def cards_of(ac, note_id):
    return ac("notesInfo", notes=[note_id])[0]["cards"]


def test_get_decks_change_deck_and_delete_notes(ac):
    first = ac("addNote", note=basic("decks first"))
    second = ac("addNote", note=basic("decks second"))
    one, two = cards_of(ac, first)[0], cards_of(ac, second)[0]
    assert ac("getDecks", cards=[one, two]) == {"Default": [one, two]}

    assert ac("changeDeck", cards=[two], deck="Moved::Here") is None  # made when missing
    assert ac("getDecks", cards=[one, two]) == {"Default": [one], "Moved::Here": [two]}
    assert "Moved::Here" in ac("deckNames")
    # the add-on puts a card id it does not know under the default deck
    assert ac("getDecks", cards=[two, 1]) == {"Moved::Here": [two], "Default": [1]}

    assert ac("deleteNotes", notes=[first, second, 12345]) is None  # unknown ids are ignored
    assert ac("notesInfo", notes=[first, second]) == [{}, {}]
    assert ac("findNotes", query="decks") == []
    assert ac.error("deleteNotes") == "deleteNotes: missing parameter: notes"
    assert ac.error("changeDeck", cards=[one]) == "changeDeck: missing parameter: deck"
    assert ac.error("getDecks") == "getDecks: missing parameter: cards"


def _fronts(tmp_path, sync_server, account, name="fresh"):
    col = download_collection(tmp_path / name, sync_server.url, account, "pass")
    try:
        return {note["fields"]["Front"]: note["deck"] for note in notes_in(col)}
    finally:
        col.close()


def test_obsidian_scan_deletes_and_moves_reach_the_server(make_service, account, sync_server,
                                                           tmp_path):
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    ac = Client(service.ac_port)
    gone = ac("addNote", note=basic("obsidian gone"))
    moved = ac("addNote", note=basic("obsidian moved"))
    ac("addNote", note=basic("obsidian stays"))
    assert ac("sync")["synced"] is True
    assert set(_fronts(tmp_path, sync_server, account, "before")) >= {
        "obsidian gone", "obsidian moved", "obsidian stays"}

    # Obsidian_to_Anki's scan: one multi, whose entries it never reads
    results = ac("multi", actions=[
        {"action": "deleteNotes", "params": {"notes": [gone]}},
        {"action": "changeDeck", "params": {"cards": cards_of(ac, moved), "deck": "Obsidian"}},
    ])
    assert results == [None, None]
    assert ac("sync")["synced"] is True

    fronts = _fronts(tmp_path, sync_server, account)
    assert "obsidian gone" not in fronts
    assert fronts["obsidian moved"] == "Obsidian"
    assert fronts["obsidian stays"] == "Default"


def test_deleted_note_is_not_re_added_by_a_full_download(make_service, account, sync_server,
                                                          tmp_path):
    # another device already put notes on the server: the first sync is a full download,
    # after which the notes added here through AnkiConnect are added again
    seed_other_device(tmp_path / "other", sync_server.url, account, "from the phone")
    service = start_with_ankiconnect(make_service)
    ac = Client(service.ac_port)
    deleted = ac("addNote", note=basic("added then deleted"))
    ac("addNote", note=basic("added and kept"))
    assert ac("deleteNotes", notes=[deleted]) is None
    service.sync_login(account)  # queues a sync of its own: it may do the download first
    assert ac("sync")["outcome"] in ("downloaded", "no_changes")
    assert "re-applied after full download" in service.logs()

    assert sorted(_fronts(tmp_path, sync_server, account)) == ["added and kept", "from the phone"]
    assert ac("findNotes", query='"added then deleted"') == []
