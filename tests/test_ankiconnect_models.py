"""AnkiConnect's model (note type) actions and updateNoteModel, through the worker's port,
and what an edit of a note type's schema does to the sync."""

import contextlib
import itertools
import threading

import pytest

from anki_server import download_collection, free_port, notes_in, upload_collection
from helpers import card, wait_for_log
from sync_proxy import SyncProxy
from test_ankiconnect import Client, ac, basic, keyed, wait_for_port  # noqa: F401 (fixtures)

FRONT_BACK = [{"Name": "Forward", "Front": "{{Front}}", "Back": "{{FrontSide}}<hr>{{Back}}"},
              {"Front": "{{Back}}", "Back": "{{FrontSide}}<hr>{{Front}}"}]


def two_way(ac, name, css=None):
    """A note type with two templates ("Forward", "Card 2") and fields Front, Back."""
    extra = {} if css is None else {"css": css}
    return ac("createModel", modelName=name, inOrderFields=["Front", "Back"],
              cardTemplates=FRONT_BACK, **extra)


def field_values(ac, note_id):
    [info] = ac("notesInfo", notes=[note_id])
    return {name: field["value"] for name, field in info["fields"].items()}


def test_create_model_with_templates_and_the_add_ons_refusals(ac):
    created = two_way(ac, "Two way", css=".card { color: navy; }")
    assert isinstance(created["id"], int) and created["name"] == "Two way"
    assert created["type"] == 0 and created["css"] == ".card { color: navy; }"
    assert [field["name"] for field in created["flds"]] == ["Front", "Back"]
    assert [(t["name"], t["qfmt"], t["ord"]) for t in created["tmpls"]] == [
        ("Forward", "{{Front}}", 0), ("Card 2", "{{Back}}", 1)]  # unnamed: "Card N"
    assert ac("modelNamesAndIds")["Two way"] == created["id"]
    assert ac("findModelsByName", modelNames=["Two way"]) == [created]

    note_id = ac("addNote", note=basic("made on Two way", "its back", model="Two way"))
    assert len(ac("findCards", query=f"nid:{note_id}")) == 2  # one card per template

    plain = ac("createModel", modelName="Default css", inOrderFields=["Only"],
               cardTemplates=[{"Front": "{{Only}}", "Back": "{{Only}}"}])
    assert ".card" in plain["css"]  # Anki's default styling when none is given

    make = dict(modelName="Refused", inOrderFields=["A"],
                cardTemplates=[{"Front": "{{A}}", "Back": "{{A}}"}])
    assert ac.error("createModel", **{**make, "inOrderFields": []}) == (
        "Must provide at least one field for inOrderFields")
    assert ac.error("createModel", **{**make, "cardTemplates": []}) == (
        "Must provide at least one card for cardTemplates")
    assert ac.error("createModel", **{**make, "modelName": "Two way"}) == (
        "Model name already exists")
    assert ac.error("createModel", modelName="Refused", inOrderFields=["A"]) == (
        "createModel: missing parameter: cardTemplates")
    assert ac.error("createModel", **{**make, "cardTemplates": [{"Front": "{{A}}"}]}) == (
        "createModel: missing parameter: Back")
    assert "Refused" not in ac("modelNames")


def test_create_cloze_model(ac):
    cloze = ac("createModel", modelName="My cloze", inOrderFields=["Text", "Extra"], isCloze=True,
               cardTemplates=[{"Name": "Cloze", "Front": "{{cloze:Text}}",
                               "Back": "{{cloze:Text}}<br>{{Extra}}"}])
    assert cloze["type"] == 1
    assert ac("findModelsById", modelIds=[cloze["id"]])[0]["type"] == 1
    note_id = ac("addNote", note={"deckName": "Default", "modelName": "My cloze",
                                  "fields": {"Text": "{{c1::one}} and {{c2::two}}"}})
    assert len(ac("findCards", query=f"nid:{note_id}")) == 2  # one card per cloze number
    refused = ac.error("addNote", note={"deckName": "Default", "modelName": "My cloze",
                                        "fields": {"Text": "no deletion here"}})
    assert "cloze" in refused


def test_find_models_and_model_name_from_id(ac):
    ids = ac("modelNamesAndIds")
    basic_model, = ac("findModelsById", modelIds=[ids["Basic"]])
    assert basic_model["name"] == "Basic" and basic_model["id"] == ids["Basic"]
    assert {"tmpls", "flds", "css", "type", "sortf", "req"} <= set(basic_model)
    assert ac("findModelsByName", modelNames=["Basic"]) == [basic_model]
    assert ac("modelNameFromId", modelId=ids["Basic"]) == "Basic"
    assert ac("findModelsById", modelIds=[]) == []

    assert ac.error("findModelsById", modelIds=[ids["Basic"], 123]) == "model was not found: 123"
    assert ac.error("findModelsById", modelIds=["nope"]) == "model was not found: nope"
    assert ac.error("findModelsByName", modelNames=["Basic", "Nope"]) == (
        "model was not found: Nope")
    assert ac.error("modelNameFromId", modelId=123) == "model was not found: 123"
    assert ac.error("findModelsByName") == "findModelsByName: missing parameter: modelNames"


def test_reading_fields_templates_and_styling(ac):
    two_way(ac, "Readable", css="* {}")
    assert ac("modelFieldNames", modelName="Readable") == ["Front", "Back"]
    assert ac("modelFieldDescriptions", modelName="Readable") == ["", ""]
    assert ac("modelFieldFonts", modelName="Readable") == {
        "Front": {"font": "Arial", "size": 20}, "Back": {"font": "Arial", "size": 20}}
    assert ac("modelFieldsOnTemplates", modelName="Readable") == {
        "Forward": [["Front"], ["Back"]], "Card 2": [["Back"], ["Front"]]}
    assert ac("modelTemplates", modelName="Readable") == {
        "Forward": {"Front": "{{Front}}", "Back": "{{FrontSide}}<hr>{{Back}}"},
        "Card 2": {"Front": "{{Back}}", "Back": "{{FrontSide}}<hr>{{Front}}"}}
    assert ac("modelStyling", modelName="Readable") == {"css": "* {}"}
    # modifiers are taken off; sections ({{#...}}) are not fields, as in the add-on
    ac("createModel", modelName="Modifiers", inOrderFields=["Word", "Hint"],
       cardTemplates=[{"Front": "{{text:Word}}{{#Hint}}{{hint:Hint}}{{/Hint}}",
                       "Back": "{{FrontSide}}{{Word}}{{Hint}}"}])
    assert ac("modelFieldsOnTemplates", modelName="Modifiers") == {
        "Card 1": [["Word", "Hint"], []]}

    for name in ("modelFieldNames", "modelFieldDescriptions", "modelFieldFonts",
                 "modelFieldsOnTemplates", "modelTemplates", "modelStyling"):
        assert ac.error(name, modelName="Nope") == "model was not found: Nope"
        assert ac.error(name) == f"{name}: missing parameter: modelName"


def test_update_templates_styling_and_find_and_replace(ac):
    two_way(ac, "Styled", css="* {}")
    assert ac("updateModelTemplates", model={"name": "Styled", "templates": {
        "Forward": {"Front": "{{Front}}?", "Back": ""},  # an empty side is left as it was
        "No such card": {"Front": "ignored"}}}) is None
    assert ac("modelTemplates", modelName="Styled")["Forward"] == {
        "Front": "{{Front}}?", "Back": "{{FrontSide}}<hr>{{Back}}"}
    assert ac("updateModelStyling", model={"name": "Styled", "css": "* {color: red;}"}) is None
    assert ac("modelStyling", modelName="Styled") == {"css": "* {color: red;}"}
    assert ac.error("updateModelTemplates", model={"name": "Nope", "templates": {}}) == (
        "model was not found: Nope")
    assert ac.error("updateModelStyling", model={"name": "Nope", "css": ""}) == (
        "model was not found: Nope")

    replace = dict(modelName="Styled", findText="{{Back}}", replaceText="{{Back}}!")
    assert ac("findAndReplaceInModels", **replace, front=True, back=False, css=False) == 1
    assert ac("modelTemplates", modelName="Styled")["Card 2"]["Front"] == "{{Back}}!"
    assert ac("modelTemplates", modelName="Styled")["Forward"]["Back"] == (
        "{{FrontSide}}<hr>{{Back}}")  # the back was left out
    assert ac("findAndReplaceInModels", modelName="Styled", findText="red", replaceText="blue",
              front=False, back=False) == 1  # css defaults to true
    assert ac("modelStyling", modelName="Styled") == {"css": "* {color: blue;}"}
    assert ac("findAndReplaceInModels", modelName="Styled", findText="absent",
              replaceText="x") == 0
    two_way(ac, "Styled too", css="* {color: teal;}")
    ac("updateModelStyling", model={"name": "Styled", "css": "* {color: teal;}"})
    # no modelName: every note type
    assert ac("findAndReplaceInModels", modelName="", findText="color: teal", replaceText="color:"
              " green", front=False, back=False, css=True) == 2
    assert ac("modelStyling", modelName="Styled too") == {"css": "* {color: green;}"}
    assert ac("modelStyling", modelName="Styled") == {"css": "* {color: green;}"}
    assert ac.error("findAndReplaceInModels", modelName="Nope", findText="a",
                    replaceText="b") == "model was not found: Nope"


def test_template_rename_reposition_add_remove(ac):
    two_way(ac, "Templates")
    note_id = ac("addNote", note=basic("templated", "its back", model="Templates"))
    assert ac("modelTemplateRename", modelName="Templates", oldTemplateName="Card 2",
              newTemplateName="Backward") is None
    assert list(ac("modelTemplates", modelName="Templates")) == ["Forward", "Backward"]

    assert ac("modelTemplateReposition", modelName="Templates", templateName="Backward",
              index=0) is None
    assert list(ac("modelTemplates", modelName="Templates")) == ["Backward", "Forward"]
    [moved] = ac("findModelsByName", modelNames=["Templates"])
    assert [template["ord"] for template in moved["tmpls"]] == [0, 1]

    third = {"Name": "Third", "Front": "{{Front}} {{Back}}", "Back": "{{FrontSide}}"}
    assert ac("modelTemplateAdd", modelName="Templates", template=third) is None
    assert list(ac("modelTemplates", modelName="Templates")) == ["Backward", "Forward", "Third"]
    assert len(ac("findCards", query=f"nid:{note_id}")) == 3  # the note got its third card
    # the add-on: a template of that name already there has its sides replaced
    assert ac("modelTemplateAdd", modelName="Templates",
              template={**third, "Front": "{{Back}} {{Front}}"}) is None
    assert ac("modelTemplates", modelName="Templates")["Third"]["Front"] == "{{Back}} {{Front}}"

    assert ac("modelTemplateRemove", modelName="Templates", templateName="Backward") is None
    assert list(ac("modelTemplates", modelName="Templates")) == ["Forward", "Third"]
    assert len(ac("findCards", query=f"nid:{note_id}")) == 2

    missing = "template was not found in Templates: Nope"
    assert ac.error("modelTemplateRename", modelName="Templates", oldTemplateName="Nope",
                    newTemplateName="x") == missing
    assert ac.error("modelTemplateReposition", modelName="Templates", templateName="Nope",
                    index=0) == missing
    assert ac.error("modelTemplateRemove", modelName="Templates", templateName="Nope") == missing
    assert ac.error("modelTemplateAdd", modelName="Nope", template=third) == (
        "model was not found: Nope")
    assert ac.error("modelTemplateAdd", modelName="Templates", template={"Name": "x"}) == (
        "modelTemplateAdd: missing parameter: Front")
    ac("modelTemplateRemove", modelName="Templates", templateName="Third")
    assert ac.error("modelTemplateRemove", modelName="Templates", templateName="Forward") == (
        "must have 1 template")
    assert list(ac("modelTemplates", modelName="Templates")) == ["Forward"]


def test_field_rename_reposition_add_remove(ac):
    two_way(ac, "Fields")
    note_id = ac("addNote", note=basic("fielded", "its back", model="Fields"))
    assert ac("modelFieldRename", modelName="Fields", oldFieldName="Back",
              newFieldName="Answer") is None
    assert ac("modelFieldNames", modelName="Fields") == ["Front", "Answer"]
    # the templates follow the rename, and the note keeps its text
    assert ac("modelTemplates", modelName="Fields")["Card 2"]["Front"] == "{{Answer}}"
    assert field_values(ac, note_id) == {"Front": "fielded", "Answer": "its back"}

    assert ac("modelFieldReposition", modelName="Fields", fieldName="Answer", index=0) is None
    assert ac("modelFieldNames", modelName="Fields") == ["Answer", "Front"]
    assert field_values(ac, note_id) == {"Answer": "its back", "Front": "fielded"}

    assert ac("modelFieldAdd", modelName="Fields", fieldName="Extra") is None
    assert ac("modelFieldNames", modelName="Fields") == ["Answer", "Front", "Extra"]
    assert ac("modelFieldAdd", modelName="Fields", fieldName="Hint", index=1) is None
    assert ac("modelFieldNames", modelName="Fields") == ["Answer", "Hint", "Front", "Extra"]
    # a field already there is not added twice, but it is moved to the index
    assert ac("modelFieldAdd", modelName="Fields", fieldName="Extra", index=0) is None
    assert ac("modelFieldNames", modelName="Fields") == ["Extra", "Answer", "Hint", "Front"]
    assert field_values(ac, note_id) == {"Extra": "", "Answer": "its back", "Hint": "",
                                         "Front": "fielded"}

    assert ac("modelFieldRemove", modelName="Fields", fieldName="Hint") is None
    assert ac("modelFieldNames", modelName="Fields") == ["Extra", "Answer", "Front"]

    missing = "field was not found in Fields: Nope"
    assert ac.error("modelFieldRename", modelName="Fields", oldFieldName="Nope",
                    newFieldName="x") == missing
    assert ac.error("modelFieldReposition", modelName="Fields", fieldName="Nope",
                    index=0) == missing
    assert ac.error("modelFieldRemove", modelName="Fields", fieldName="Nope") == missing
    assert ac.error("modelFieldAdd", modelName="Nope", fieldName="x") == (
        "model was not found: Nope")
    assert ac.error("modelFieldAdd", modelName="Fields") == (
        "modelFieldAdd: missing parameter: fieldName")
    assert ac("modelFieldNames", modelName="Fields") == ["Extra", "Answer", "Front"]


def test_field_font_size_and_description(ac):
    two_way(ac, "Fonts")
    assert ac("modelFieldSetFont", modelName="Fonts", fieldName="Front", font="Courier") is None
    assert ac("modelFieldSetFontSize", modelName="Fonts", fieldName="Back", fontSize=16) is None
    assert ac("modelFieldFonts", modelName="Fonts") == {
        "Front": {"font": "Courier", "size": 20}, "Back": {"font": "Arial", "size": 16}}
    assert ac("modelFieldSetDescription", modelName="Fonts", fieldName="Front",
              description="the word") is True
    assert ac("modelFieldDescriptions", modelName="Fonts") == ["the word", ""]

    assert ac.error("modelFieldSetFont", modelName="Fonts", fieldName="Front", font=12) == (
        "font should be a string: 12")
    assert ac.error("modelFieldSetFontSize", modelName="Fonts", fieldName="Front",
                    fontSize="big") == "fontSize should be an integer: big"
    assert ac.error("modelFieldSetDescription", modelName="Fonts", fieldName="Front",
                    description=1) == "description should be a string: 1"
    assert ac.error("modelFieldSetFont", modelName="Fonts", fieldName="Nope", font="x") == (
        "field was not found in Fonts: Nope")
    assert ac.error("modelFieldSetFontSize", modelName="Nope", fieldName="Front",
                    fontSize=1) == "model was not found: Nope"
    assert ac("modelFieldFonts", modelName="Fonts")["Front"] == {"font": "Courier", "size": 20}


def test_update_note_model(ac):
    ac("createModel", modelName="Three fields", inOrderFields=["Word", "Meaning", "Example"],
       cardTemplates=[{"Front": "{{Word}}", "Back": "{{Meaning}}"},
                      {"Front": "{{Meaning}}", "Back": "{{Word}}"}])
    note_id = ac("addNote", note=basic("retyped", "its meaning"))
    [old_card] = ac("findCards", query=f"nid:{note_id}")
    assert ac("updateNoteModel", note={
        "id": note_id, "modelName": "Three fields", "tags": ["moved"],
        "fields": {"word": "retyped", "Meaning": "its meaning", "Unknown": "dropped"}}) is None
    [info] = ac("notesInfo", notes=[note_id])
    assert info["modelName"] == "Three fields" and info["tags"] == ["moved"]
    assert field_values(ac, note_id) == {"Word": "retyped", "Meaning": "its meaning",
                                         "Example": ""}  # matched case-insensitively
    cards = ac("findCards", query=f"nid:{note_id}")
    assert len(cards) == 2 and old_card in cards  # the card of the first template is kept
    # the same note type: fields and tags replaced; no tags given, none kept (the add-on's)
    assert ac("updateNoteModel", note={"id": note_id, "modelName": "Three fields",
                                       "fields": {"Word": "again"}}) is None
    [info] = ac("notesInfo", notes=[note_id])
    assert info["tags"] == [] and field_values(ac, note_id)["Meaning"] == ""

    change = {"id": note_id, "modelName": "Basic", "fields": {"Front": "x"}}
    assert ac.error("updateNoteModel", note={**change, "id": None}) == "Note ID is required"
    assert ac.error("updateNoteModel", note={**change, "modelName": ""}) == (
        "Model name is required")
    assert ac.error("updateNoteModel", note={**change, "fields": ["x"]}) == (
        "Fields must be provided as a dictionary")
    assert ac.error("updateNoteModel", note={**change, "id": 1}) == "Note was not found: 1"
    assert ac.error("updateNoteModel", note={**change, "modelName": "Nope"}) == (
        "Model 'Nope' not found")
    assert ac.error("updateNoteModel", note={**change, "tags": "one"}) == (
        "Must provide tags as a list of strings")
    assert ac("notesInfo", notes=[note_id])[0]["modelName"] == "Three fields"


# --- schema changes and the sync ---

def start_with_ankiconnect_and_voice(make_service, **settings):
    """A service whose card jobs speak through the fake TTS (which can hold them)."""
    port = free_port()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}", **settings)
    wait_for_port(service, port)
    return service, Client(port)


def fresh_copy(tmp_path, sync_server, account, name):
    """(Basic's field names, {front or word: note}) of a fresh collection synced from the server."""
    col = download_collection(tmp_path / name, sync_server.url, account, "pass")
    try:
        names = col.models.field_names(col.models.by_name("Basic"))
        found = {note["fields"].get("Front") or note["fields"]["Word"]: note
                 for note in notes_in(col)}
        return names, found
    finally:
        col.close()


@pytest.mark.slow
def test_a_field_added_goes_up_whole_after_a_sync_and_loses_no_note(
        make_service, account, sync_server, fake_tts, tmp_path):
    service, ac = start_with_ankiconnect_and_voice(make_service)
    service.sync_login(account)
    wait_for_log(service, "synced (")
    ac("addNote", note=basic("added over AnkiConnect"))
    first = service.post_card(card(1))[1]["taskId"]
    assert service.wait(first)[0]["status"] == "success"
    assert ac("sync")["synced"] is True

    # the phone takes the server's collection, adds a note and syncs it (a normal sync),
    # after ankisync's last sync: only the sync before the edit brings it here
    phone = download_collection(tmp_path / "phone", sync_server.url, account, "pass")
    note = phone.new_note(phone.models.by_name("Basic"))
    note["Front"] = "added on the phone"
    phone.add_note(note, phone.decks.id("Default"))
    upload_collection(phone, sync_server.url, account, "pass")
    phone.close()

    # a card job held in its TTS request holds the one Huey worker: no queued sync runs
    # (and records its own outcome) before the edit's sync is read from health
    fake_tts.hold()
    held = service.post_card(card(2))[1]["taskId"]
    fake_tts.wait_held()
    try:
        assert ac("modelFieldAdd", modelName="Basic", fieldName="Source") is None
        assert "AnkiConnect: modelFieldAdd changed the schema" in service.logs()
        status, _, health = service.call("GET", "/api/v1/health")
        assert status == 200 and health["sync"]["lastOutcome"] == "uploaded"
        assert health["sync"]["lastError"] is None
        assert ac("findNotes", query='"added on the phone"')  # the sync before brought it
        names, found = fresh_copy(tmp_path, sync_server, account, "fresh")
        assert names == ["Front", "Back", "Source"]
        assert {"added over AnkiConnect", "added on the phone", "word1"} <= set(found)
    finally:
        fake_tts.release()

    # after the upload, syncs are normal again: the card held meanwhile arrives
    job = service.wait(held)[0]
    assert job["status"] == "success" and job["result"]["synced"], job
    ac("addNote", note={"deckName": "Default", "modelName": "Basic",
                        "fields": {"Front": "after the edit", "Source": "a book"}})
    assert ac("sync")["outcome"] in ("normal", "no_changes")  # a queued one may be first
    names, found = fresh_copy(tmp_path, sync_server, account, "fresh again")
    assert {"added over AnkiConnect", "added on the phone", "word1", "word2",
            "after the edit"} <= set(found)
    assert found["after the edit"]["fields"]["Source"] == "a book"

    # a rename is no schema change: a normal sync carries it
    assert ac("modelFieldRename", modelName="Basic", oldFieldName="Source",
              newFieldName="Origin") is None
    assert ac("sync")["outcome"] in ("normal", "no_changes")
    assert fresh_copy(tmp_path, sync_server, account, "renamed")[0] == [
        "Front", "Back", "Origin"]


@pytest.mark.slow
def test_a_note_given_another_note_type_goes_up_whole(make_service, account, sync_server,
                                                       fake_tts, tmp_path):
    service, ac = start_with_ankiconnect_and_voice(make_service)
    service.sync_login(account)
    wait_for_log(service, "synced (")
    ac("createModel", modelName="Vocabulary", inOrderFields=["Front", "Meaning"],
       cardTemplates=[{"Front": "{{Front}}", "Back": "{{Meaning}}"}])
    note_id = ac("addNote", note=basic("retyped word", "its meaning"))
    assert ac("sync")["synced"] is True
    fake_tts.hold()  # holds the Huey worker: no queued sync runs before health is read
    held = service.post_card(card(1))[1]["taskId"]
    fake_tts.wait_held()
    try:
        assert ac("updateNoteModel", note={"id": note_id, "modelName": "Vocabulary", "fields":
                                           {"Front": "retyped word", "Meaning": "m"}}) is None
        assert service.call("GET", "/api/v1/health")[2]["sync"]["lastOutcome"] == "uploaded"
    finally:
        fake_tts.release()
    assert service.wait(held)[0]["status"] == "success"
    col = download_collection(tmp_path / "fresh", sync_server.url, account, "pass")
    try:
        found = {note["fields"].get("Front") or note["fields"]["Word"]: note
                 for note in notes_in(col)}
    finally:
        col.close()
    assert found["retyped word"]["notetype"] == "Vocabulary"
    assert found["retyped word"]["fields"] == {"Front": "retyped word", "Meaning": "m"}
    assert "word1" in found


@pytest.mark.slow
def test_a_schema_change_is_refused_or_undone_when_its_syncs_fail(
        make_service, account, sync_server, fake_tts, tmp_path):
    with SyncProxy(sync_server.url) as proxy:
        service, ac = start_with_ankiconnect_and_voice(make_service,
                                                       ANKISYNC_SYNC_ENDPOINT=proxy.url)
        ac("addNote", note=basic("kept through every failure"))
        service.sync_login(account)
        wait_for_log(service, "synced (")
        # a card job held in its TTS request holds the one Huey worker: no queued sync
        # runs meanwhile, so the syncs seen below are the edits' own
        fake_tts.hold()
        held = service.post_card(card(1))[1]["taskId"]
        fake_tts.wait_held()
        try:
            # the server cannot be reached: refused, nothing changed
            proxy.answers = {"/sync/meta": itertools.repeat("fail")}
            refused = ac.error("modelFieldAdd", modelName="Basic", fieldName="Never")
            assert refused.startswith("modelFieldAdd: not done: it changes the note type's"
                                      " schema") and "had a problem" in refused
            assert ac("modelFieldNames", modelName="Basic") == ["Front", "Back"]

            # the sync before passes, the upload's fails before anything went: undone
            proxy.answers = {"/sync/meta": iter(["pass", "fail"])}
            undone = ac.error("modelTemplateAdd", modelName="Basic", template={
                "Name": "Reverse", "Front": "{{Back}}", "Back": "{{Front}}"})
            assert "not done: the full upload it needs failed, so it was undone" in undone
            assert list(ac("modelTemplates", modelName="Basic")) == ["Card 1"]
            assert len(ac("findCards", query="deck:Default")) == 1
            proxy.answers = {"/sync/meta": iter(["pass", "fail"])}
            retyped = ac("findNotes", query='"kept through every failure"')[0]
            assert "undone" in ac.error("updateNoteModel", note={
                "id": retyped, "modelName": "Cloze", "fields": {"Text": "{{c1::x}}"}})
            [info] = ac("notesInfo", notes=[retyped])  # both its steps undone
            assert info["modelName"] == "Basic" and info["tags"] == ["test"]
            assert info["fields"]["Front"]["value"] == "kept through every failure"

            # the upload itself fails, after the collection was closed for it: a sync at
            # once takes the server's copy back, which undoes the edit and keeps every note
            proxy.answers = {"/sync/upload": itertools.repeat("fail")}
            left = ac.error("modelFieldRemove", modelName="Basic", fieldName="Back")
            assert left.startswith("modelFieldRemove: not done: the full upload it needs"
                                   " failed") and "the server's copy was taken back" in left
            assert "/sync/upload" in proxy.seen and "/sync/download" in proxy.seen
            assert ac("modelFieldNames", modelName="Basic") == ["Front", "Back"]
            assert ac("findNotes", query='"kept through every failure"')

            # and if that sync fails too, the next one settles it
            proxy.answers = {"/sync/upload": itertools.repeat("fail"),
                             "/sync/download": itertools.repeat("fail")}
            unsettled = ac.error("modelFieldRemove", modelName="Basic", fieldName="Back")
            assert unsettled.startswith("modelFieldRemove: not settled")
            proxy.answers = {}
            assert ac("sync")["outcome"] == "downloaded"
            assert ac("modelFieldNames", modelName="Basic") == ["Front", "Back"]
            assert ac("findNotes", query='"kept through every failure"')
        finally:
            fake_tts.release()
        assert service.wait(held)[0]["status"] == "success"

        assert ac("modelFieldAdd", modelName="Basic", fieldName="At last") is None
        names, found = fresh_copy(tmp_path, sync_server, account, "fresh")
        assert names == ["Front", "Back", "At last"]
        assert {"kept through every failure", "word1"} <= set(found)
        service.kill()


@pytest.mark.slow
def test_power_cut_during_the_full_upload_loses_no_note(make_service, account, sync_server,
                                                        tmp_path):
    with SyncProxy(sync_server.url) as proxy:
        service, ac = start_with_ankiconnect_and_voice(make_service,
                                                       ANKISYNC_SYNC_ENDPOINT=proxy.url)
        service.sync_login(account)
        wait_for_log(service, "synced (")
        ac("addNote", note=basic("added over AnkiConnect"))
        job = service.post_card(card(1))[1]["taskId"]
        assert service.wait(job)[0]["status"] == "success"
        assert ac("sync")["synced"] is True

        proxy.answers = {"/sync/upload": iter(["hold"])}
        def edit():
            with contextlib.suppress(OSError):  # its answer never comes
                ac.raw("modelFieldAdd", modelName="Basic", fieldName="Lost")
        threading.Thread(target=edit, daemon=True).start()
        assert proxy.holding.wait(60), service.logs()
        service.kill()  # the power goes, the collection closed for the upload
        service.process.wait(10)
        proxy.release()

        service.start()
        wait_for_port(service, ac.port)
        # the server never got the upload: the sync the worker makes as it starts (or
        # this one, if it comes first) takes its copy back
        assert ac("sync")["outcome"] in ("downloaded", "no_changes")
        assert "collection sync: downloaded" in service.logs()
        assert ac("modelFieldNames", modelName="Basic") == ["Front", "Back"]
        assert ac("findNotes", query='"added over AnkiConnect"')
        names, found = fresh_copy(tmp_path, sync_server, account, "fresh")
        assert names == ["Front", "Back"]
        assert {"added over AnkiConnect", "word1"} <= set(found)
