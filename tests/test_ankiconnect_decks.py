"""AnkiConnect's deck actions and deleteNotes/changeDeck, through the worker's port."""

from anki_server import download_collection, notes_in, seed_other_device
from test_ankiconnect import Client, ac, basic, keyed, start_with_ankiconnect  # noqa: F401 (fixtures)

NO_CARDS_KEPT = "Since Anki 2.1.28 it's not possible to delete decks without deleting cards as well"


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


def test_delete_decks_only_with_their_cards(ac):
    for deck in ("Doomed", "Kept"):
        ac("createDeck", deck=deck)
    ac("addNote", note=basic("doomed", deck="Doomed"))
    note = ac("addNote", note=basic("kept elsewhere", deck="Kept"))
    for extra in ({}, {"cardsToo": False}):
        assert ac.error("deleteDecks", decks=["Doomed"], **extra) == NO_CARDS_KEPT
    assert "Doomed" in ac("deckNames")

    assert ac("deleteDecks", decks=["Doomed", "No such deck"], cardsToo=True) is None
    names = ac("deckNames")
    assert "Doomed" not in names and "Kept" in names and "No such deck" not in names
    assert ac("findNotes", query="doomed") == []
    assert ac("findNotes", query='"kept elsewhere"') == [note]


def test_deck_config_get_save_set_clone_remove(ac):
    config = ac("getDeckConfig", deck="Default")
    assert config["name"] == "Default" and config["id"] == 1 and "new" in config
    assert ac("getDeckConfig", deck="No such deck") is False

    config["new"]["perDay"] = 37
    assert ac("saveDeckConfig", config=config) is True
    assert ac("getDeckConfig", deck="Default")["new"]["perDay"] == 37
    assert ac("saveDeckConfig", config={**config, "id": 987654321}) is False

    clone = ac("cloneDeckConfigId", name="Cloned", cloneFrom=1)
    assert isinstance(clone, int) and clone != 1
    assert ac("cloneDeckConfigId", name="From nothing", cloneFrom=987654321) is False
    ac("createDeck", deck="Configured")
    assert ac("setDeckConfigId", decks=["Configured"], configId=clone) is True
    configured = ac("getDeckConfig", deck="Configured")
    assert (configured["id"], configured["name"]) == (clone, "Cloned")
    assert configured["new"]["perDay"] == 37  # cloned from the one saved above
    assert ac("setDeckConfigId", decks=["Configured", "No such deck"], configId=1) is False
    assert ac("getDeckConfig", deck="Configured")["id"] == clone  # nothing changed

    # a schema change, which would force a full sync: refused, nothing removed
    assert "forces a full sync" in ac.error("removeDeckConfigId", configId=clone)
    assert ac("getDeckConfig", deck="Configured")["id"] == clone
    assert ac("removeDeckConfigId", configId=987654321) is False
    assert ac.error("saveDeckConfig") == "saveDeckConfig: missing parameter: config"
    assert ac.error("setDeckConfigId", decks=["Default"]) == (
        "setDeckConfigId: missing parameter: configId")


def test_deck_stats(ac):
    ac("createDeck", deck="Stats")
    for front in ("stats one", "stats two"):
        ac("addNote", note=basic(front, deck="Stats"))
    deck_id = ac("deckNamesAndIds")["Stats"]
    stats = ac("getDeckStats", decks=["Stats", "Never made"])
    assert stats == {str(deck_id): {"deck_id": deck_id, "name": "Stats", "new_count": 2,
                                    "learn_count": 0, "review_count": 0, "total_in_deck": 2}}
    assert "Never made" not in ac("deckNames")
    assert ac.error("getDeckStats") == "getDeckStats: missing parameter: decks"


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
