"""AnkiConnect's note actions (tags, empty notes, mod times, aliases), through the worker's port."""

from anki.collection import Collection

from anki_server import download_collection, notes_in, seed_other_device, upload_collection
from helpers import wait_for_log
from test_ankiconnect import Client, ac, basic, keyed, start_with_ankiconnect  # noqa: F401 (fixtures)


def test_notes_info_needs_notes_or_a_query_and_names_the_profile(ac):
    note_id = ac("addNote", note=basic("notes info profile"))
    assert ac.error("notesInfo") == 'Must provide either "notes" or a "query"'
    [info] = ac("notesInfo", query='"notes info profile"')
    assert info["noteId"] == note_id and info["profile"] == "User 1"
    assert info["fields"]["Front"] == {"value": "notes info profile", "order": 0}
    assert isinstance(info["mod"], int) and len(info["cards"]) == 1
    # the add-on lets a query win over notes
    assert ac("notesInfo", notes=[1], query='"notes info profile"') == [info]
    assert ac("notesInfo", notes=[note_id, 1]) == [info, {}]


def test_profile_name_comes_from_the_setting(make_service):
    service = start_with_ankiconnect(make_service, ANKISYNC_ANKICONNECT_PROFILE="Marie")
    ac = Client(service.ac_port)
    note_id = ac("addNote", note=basic("profile setting"))
    assert ac("notesInfo", notes=[note_id])[0]["profile"] == "Marie"
    assert ac("getProfiles") == ["Marie"] and ac("getActiveProfile") == "Marie"
    assert ac("loadProfile", name="Marie") is True
    assert ac("loadProfile", name="User 1") is False


def test_notes_mod_time(ac):
    note_id = ac("addNote", note=basic("mod time"))
    [info] = ac("notesInfo", notes=[note_id])
    assert ac("notesModTime", notes=[note_id, 1]) == [{"noteId": note_id, "mod": info["mod"]}, {}]
    assert ac.error("notesModTime") == "notesModTime: missing parameter: notes"


def test_replace_tags_in_some_notes_and_in_all(ac):
    first = ac("addNote", note=basic("replace one", tags=["european-languages", "keep"]))
    second = ac("addNote", note=basic("replace two", tags=["european-languages"]))
    third = ac("addNote", note=basic("replace three", tags=["european-languages"]))
    assert ac("replaceTags", notes=[first, second, 12345], tag_to_replace="european-languages",
              replace_with_tag="french-languages") is None  # an unknown note is skipped
    tags = {info["noteId"]: sorted(info["tags"])
            for info in ac("notesInfo", notes=[first, second, third])}
    assert tags == {first: ["french-languages", "keep"], second: ["french-languages"],
                    third: ["european-languages"]}

    assert ac("replaceTagsInAllNotes", tag_to_replace="french-languages",
              replace_with_tag="romance") is None
    assert ac("getNoteTags", note=first) == ["keep", "romance"]
    assert ac("getNoteTags", note=second) == ["romance"]
    assert ac("getNoteTags", note=third) == ["european-languages"]
    assert ac.error("replaceTags", notes=[first], tag_to_replace="x") == (
        "replaceTags: missing parameter: replace_with_tag")
    assert ac.error("replaceTagsInAllNotes", tag_to_replace=["x"], replace_with_tag="y") == (
        "tag_to_replace must be a tag name (a string)")


def test_clear_unused_tags(ac):
    note_id = ac("addNote", note=basic("unused tags", tags=["soon-unused", "still-used"]))
    ac("removeTags", notes=[note_id], tags="soon-unused")
    assert "soon-unused" in ac("getTags")  # Anki keeps a tag no note has any more
    assert ac("clearUnusedTags") is None
    tags = ac("getTags")
    assert "soon-unused" not in tags and "still-used" in tags


def test_remove_empty_notes(ac):
    empty = ac("addNote", note=basic("will be emptied"))
    kept = ac("addNote", note=basic("not empty", back=""))
    ac("updateNoteFields", note={"id": empty, "fields": {"Front": " ", "Back": ""}})
    assert ac("removeEmptyNotes") is None
    assert ac("notesInfo", notes=[empty, kept])[0] == {}
    assert ac("notesInfo", notes=[kept])[0]["noteId"] == kept
    assert "Basic" in ac("modelNames")  # note types are left alone
    assert ac("removeEmptyNotes") is None  # nothing to remove: still fine


def test_can_add_note_and_with_error_detail(ac):
    ac("addNote", note=basic("can add taken"))
    assert ac("canAddNote", note=basic("can add fresh")) is True
    assert ac("canAddNote", note=basic("can add taken")) is False
    assert ac("canAddNote", note=basic("", back="x")) is False
    assert ac("canAddNoteWithErrorDetail", note=basic("can add fresh")) == {"canAdd": True}
    assert ac("canAddNoteWithErrorDetail", note=basic("can add taken")) == {
        "canAdd": False, "error": "cannot create note because it is a duplicate"}
    assert ac("canAddNoteWithErrorDetail", note=basic("x", model="No such")) == {
        "canAdd": False, "error": "model was not found: No such"}
    assert ac("findNotes", query='"can add fresh"') == []  # a check adds nothing
    assert ac.error("canAddNote") == "canAddNote: missing parameter: note"


def test_deck_name_from_id(ac):
    deck_id = ac("createDeck", deck="Named::By id")
    assert ac("deckNameFromId", deckId=deck_id) == "Named::By id"
    assert ac("deckNameFromId", deckId=1) == "Default"
    assert ac.error("deckNameFromId", deckId=987654321) == "deck was not found: 987654321"
    assert ac.error("deckNameFromId", deckId="1") == "deck was not found: 1"


def _fronts(tmp_path, sync_server, account, name="fresh"):
    col = download_collection(tmp_path / name, sync_server.url, account, "pass")
    try:
        return sorted(note["fields"]["Front"] for note in notes_in(col))
    finally:
        col.close()


def test_removed_empty_note_is_not_re_added_by_a_full_download(make_service, account,
                                                                sync_server, tmp_path):
    # another device put a note on the server first: the first sync here is a full
    # download, after which the notes added through AnkiConnect are added again,
    # but not the ones removeEmptyNotes or deleteNotes removed
    seed_other_device(tmp_path / "other", sync_server.url, account, "from the phone")
    service = start_with_ankiconnect(make_service)
    ac = Client(service.ac_port)
    emptied = ac("addNote", note=basic("emptied then removed"))
    deleted = ac("addNote", note=basic("deleted"))
    ac("addNote", note=basic("kept"))
    ac("updateNoteFields", note={"id": emptied, "fields": {"Front": "", "Back": ""}})
    assert ac("removeEmptyNotes") is None
    assert ac("deleteNotes", notes=[deleted]) is None
    service.sync_login(account)  # queues a sync of its own: it may do the download first
    assert ac("sync")["outcome"] in ("downloaded", "no_changes")
    assert "re-applied after full download" in service.logs()

    assert _fronts(tmp_path, sync_server, account) == ["from the phone", "kept"]
    assert ac("findNotes", query='"emptied then removed" or "deleted"') == []
    assert len(ac("findNotes", query="deck:*")) == 2


def test_deleting_a_note_from_another_device_outlives_a_full_download(make_service, account,
                                                                       sync_server, tmp_path):
    # the note came from the phone; it is deleted here, and before that deletion is
    # synced the phone changes a note type (a schema change) and uploads its whole
    # collection: the next sync here is a full download, which must not bring it back
    other = tmp_path / "other"
    seed_other_device(other, sync_server.url, account, "phone note deleted here")
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    ac = Client(service.ac_port)
    wait_for_log(service, "synced (")
    [phone_note] = ac("findNotes", query='"phone note deleted here"')
    ac("addNote", note=basic("added here"))
    assert ac("deleteNotes", notes=[phone_note]) is None

    col = Collection(str(other / "collection.anki2"))
    try:
        basic_type = col.models.by_name("Basic")
        col.models.add_field(basic_type, col.models.new_field("Extra"))
        col.models.update_dict(basic_type)
        upload_collection(col, sync_server.url, account, "pass")
    finally:
        col.close()
    # the download is this sync's, or that of the sync deleteNotes queued if the nudged
    # worker ran it only after the phone's upload: this one waits for it
    assert ac("sync")["outcome"] in ("downloaded", "no_changes")
    assert "collection sync: downloaded" in service.logs()

    assert _fronts(tmp_path, sync_server, account) == ["added here"]
    assert ac("findNotes", query='"phone note deleted here"') == []
    assert "deleted 1 notes again after a full download" in service.logs()


def test_deleting_our_own_synced_note_outlives_a_full_download(make_service, account,
                                                               sync_server, tmp_path):
    # our note reached the server (and the phone); it is deleted here, and before that
    # deletion is synced the phone uploads its whole collection after a schema change:
    # the full download here brings the note back, and the deletion must take it again
    other = tmp_path / "other"
    seed_other_device(other, sync_server.url, account, "phone note")
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    ac = Client(service.ac_port)
    wait_for_log(service, "synced (")
    ours = ac("addNote", note=basic("ours, synced, then deleted"))
    ac("sync")
    col = Collection(str(other / "collection.anki2"))
    try:
        auth = col.sync_login(account, "pass", sync_server.url)
        col.sync_collection(auth, sync_media=False)
        assert col.find_notes('"ours, synced, then deleted"')
        basic_type = col.models.by_name("Basic")
        col.models.add_field(basic_type, col.models.new_field("Extra"))
        col.models.update_dict(basic_type)
        upload_collection(col, sync_server.url, account, "pass")
    finally:
        col.close()
    assert ac("deleteNotes", notes=[ours]) is None
    # the full download is this sync's, or that of the sync deleteNotes queued if the
    # worker started that one first (it is nudged at once): either has ended when this
    # one returns, as one waits for the other
    assert ac("sync")["outcome"] in ("downloaded", "no_changes")
    assert "collection sync: downloaded" in service.logs()
    assert "deleted 1 notes again after a full download" in service.logs()
    assert ac("findNotes", query='"ours, synced, then deleted"') == []
    assert "ours, synced, then deleted" not in _fronts(tmp_path, sync_server, account)


def test_a_deleted_decks_notes_stay_deleted_after_a_full_download(make_service, account,
                                                                 sync_server, tmp_path):
    # deleteDecks with cardsToo takes the deck's notes (its subdecks' too); the first
    # sync after login is a full download, whose re-adding must skip them
    seed_other_device(tmp_path / "other", sync_server.url, account, "from the phone")
    service = start_with_ankiconnect(make_service)
    ac = Client(service.ac_port)
    ac("addNote", note=basic("kept"))
    ac("createDeck", deck="Temp::Sub")
    ac("addNote", note=basic("gone with its deck", deck="Temp"))
    ac("addNote", note=basic("gone with its subdeck", deck="Temp::Sub"))
    assert ac("deleteDecks", decks=["Temp"], cardsToo=True) is None
    assert ac("findNotes", query='gone') == []
    assert ac.error("deleteNotes", notes=["1"]) == (
        "notes must be a list of note ids (whole numbers)")
    service.sync_login(account)
    wait_for_log(service, "synced (downloaded)")
    assert ac("findNotes", query='gone') == []
    assert sorted(_fronts(tmp_path, sync_server, account)) == ["from the phone", "kept"]
