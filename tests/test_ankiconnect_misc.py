"""AnkiConnect's profile, package and graphical actions, and apiReflect, through the worker's port."""

import os

import pytest

from anki_server import download_collection, notes_in
from helpers import wait_for_log
from service import Service
from test_ankiconnect import (Client, ac, basic, keyed,  # noqa: F401 (fixtures)
                              start_with_ankiconnect)

NOT_ALLOWED = "path is not allowed: {!r}: give a file name ending in .apkg, which is kept in {}"


def test_one_profile(ac):
    assert ac("getProfiles") == ["User 1"]
    assert ac("getActiveProfile") == "User 1"
    assert ac("loadProfile", name="User 1") is True
    assert ac("loadProfile", name="Someone else") is False  # the add-on's answer
    assert ac.error("loadProfile") == "loadProfile: missing parameter: name"
    assert ac("reloadCollection") is None
    assert ac("deckNames")  # still served after it


def test_a_blank_profile_name_stops_the_start(tmp_path):
    result = Service(tmp_path / "data", ANKISYNC_ANKICONNECT_PROFILE=" ").cli("worker")
    assert result.returncode == 1
    assert "ANKISYNC_ANKICONNECT_PROFILE=' ' from environment" in result.stderr
    assert "expected a name, such as User 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_then_import_package(ac, keyed):
    ac("createDeck", deck="Packed")
    for front in ("packed one", "packed two"):
        ac("addNote", note=basic(front, deck="Packed"))
    packages = keyed.data_dir / "packages"
    assert ac("exportPackage", deck="Packed", path="packed.apkg") is True
    assert (packages / "packed.apkg").stat().st_size > 0
    assert ac("exportPackage", deck="No such deck", path="none.apkg") is False
    assert not (packages / "none.apkg").exists()

    assert ac("deleteDecks", decks=["Packed"], cardsToo=True) is None
    assert ac("findNotes", query="packed") == []
    assert ac("importPackage", path="packed.apkg") is True
    assert "Packed" in ac("deckNames")
    fronts = [info["fields"]["Front"]["value"]
              for info in ac("notesInfo", query="deck:Packed")]
    assert sorted(fronts) == ["packed one", "packed two"]

    assert ac("exportPackage", deck="Packed", path="with-reviews.apkg", includeSched=True) is True
    assert ac.error("exportPackage", deck="Packed", path="x.apkg", includeSched="yes") == (
        "includeSched must be true or false")
    assert ac.error("importPackage", path="never-made.apkg") == (
        f"package was not found: never-made.apkg: put it in {packages} first")
    (packages / "broken.apkg").write_bytes(b"not a zip")
    assert ac.error("importPackage", path="broken.apkg")  # Anki's own reason, no traceback
    assert ac.error("exportPackage", deck="Packed") == "exportPackage: missing parameter: path"


@pytest.mark.parametrize("path", [
    "../collection.anki2", "../ankisync.db", "/tmp/out.apkg", "sub/out.apkg", "../out.apkg",
    "..", ".apkg", "", "out.colpkg", "out.apkg/", "..\\out.apkg", "out.apkg\0.txt",
    ".env", 7, None, ["out.apkg"],
])
def test_package_paths_outside_the_folder_are_refused(ac, keyed, path):
    packages = keyed.data_dir / "packages"
    before = sorted(os.listdir(keyed.data_dir))
    expected = NOT_ALLOWED.format(path, packages)
    assert ac.error("exportPackage", deck="Default", path=path) == expected
    assert ac.error("importPackage", path=path) == expected
    assert sorted(os.listdir(keyed.data_dir)) == before


def test_symlinks_out_of_the_folder_are_refused_alike(ac, keyed, tmp_path):
    packages = keyed.data_dir / "packages"
    packages.mkdir(exist_ok=True)
    outside = tmp_path / "outside.apkg"
    ac("exportPackage", deck="Default", path="genuine.apkg")
    outside.write_bytes((packages / "genuine.apkg").read_bytes())
    (packages / "there.apkg").symlink_to(outside)
    (packages / "nowhere.apkg").symlink_to(tmp_path / "missing.apkg")
    (packages / "secrets.apkg").symlink_to(keyed.data_dir / "ankisync.db")
    answers = set()
    for name in ("there.apkg", "nowhere.apkg", "secrets.apkg"):
        for action, params in (("exportPackage", {"deck": "Default"}), ("importPackage", {})):
            error = ac.error(action, path=name, **params)
            assert error == NOT_ALLOWED.format(name, packages)
            answers.add(error.replace(name, "NAME"))
    assert len(answers) == 1  # whether the target exists or not, the answer is the same
    assert outside.read_bytes() == (packages / "genuine.apkg").read_bytes()  # not written
    assert not (tmp_path / "missing.apkg").exists()


def test_imported_package_reaches_the_server(make_service, account, sync_server, tmp_path):
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    wait_for_log(service, "synced (")
    ac = Client(service.ac_port)
    ac("createDeck", deck="Shared deck")
    ac("addNote", note=basic("from a shared deck", deck="Shared deck"))
    assert ac("exportPackage", deck="Shared deck", path="shared.apkg") is True
    ac("deleteDecks", decks=["Shared deck"], cardsToo=True)
    assert ac("sync")["synced"] is True

    assert ac("importPackage", path="shared.apkg") is True
    assert ac("sync")["synced"] is True
    col = download_collection(tmp_path / "fresh", sync_server.url, account, "pass")
    try:
        decks = {note["fields"]["Front"]: note["deck"] for note in notes_in(col)}
    finally:
        col.close()
    assert decks == {"from a shared deck": "Shared deck"}


WINDOW_ONLY = ["guiEditNote", "guiAddCards", "guiAddNoteSetData", "guiDeckOverview",
               "guiDeckBrowser", "guiDeckReview", "guiImportFile", "guiUndo", "guiExitAnki",
               "guiPlayAudio"]


def test_graphical_actions_answer_what_is_true_without_a_window(ac):
    note_id = ac("addNote", note=basic("graphical"))
    [card] = ac("notesInfo", notes=[note_id])[0]["cards"]
    assert ac("guiBrowse", query=f"nid:{note_id}") == [card]
    assert ac("guiBrowse", query=f"nid:{note_id}",
              reorderCards={"columnId": "noteCrt", "order": "descending"}) == [card]
    assert ac.error("guiBrowse", query="x", reorderCards={"order": "up"}) == (
        'Must provide a "columnId" and a "order" property"')
    assert ac.error("guiBrowse", reorderCards={"columnId": "noteCrt", "order": "up"}) == (
        "invalid card order: up")
    assert ac("guiSelectedNotes") == []
    assert ac("guiSelectCard", card=card) is False
    assert ac("guiSelectNote", note=card) is False
    assert ac("guiReviewActive") is False
    assert ac.error("guiCurrentCard") == "Gui review is not currently active."
    assert ac("guiStartCardTimer") is False
    assert ac("guiShowQuestion") is False and ac("guiShowAnswer") is False
    assert ac("guiAnswerCard", ease=3) is False
    assert ac("getNumCardsReviewedToday") == 0  # nothing was answered
    assert ac("guiCheckDatabase") is True
    assert ac("notesInfo", notes=[note_id])[0]["noteId"] == note_id  # the check kept it

    for name in WINDOW_ONLY:
        error = ac.error(name, note=note_id, name="Default")
        assert error.startswith(f"{name}: ankisync runs without Anki's window"), error
    assert ac("deckNames")  # guiExitAnki stopped nothing


def test_api_reflect_lists_exactly_what_is_answered(ac):
    every = ac("apiReflect", scopes=["actions"])["actions"]
    for name in ("getNumCardsReviewedToday", "insertReviews", "exportPackage", "importPackage",
                 "getProfiles", "loadProfile", "removeEmptyNotes", "notesModTime", "canAddNote",
                 "deckNameFromId", "guiBrowse", "guiCheckDatabase", "guiSelectedNotes",
                 "guiCurrentCard", "apiReflect"):
        assert name in every, name
    assert not set(WINDOW_ONLY) & set(every)
    for name in every:  # each one listed is served: none answers "unsupported action"
        body = ac.raw(name)
        assert body["error"] != "unsupported action", name
    assert ac("apiReflect", scopes=["actions"], actions=["guiEditNote", "guiBrowse", "nope"]) == {
        "scopes": ["actions"], "actions": ["guiBrowse"]}
