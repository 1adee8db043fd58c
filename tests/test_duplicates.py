"""Duplicates (issue 16): GET /api/v1/notes and a card's "onDuplicate", through the real
service, its worker, the local sync server and AnkiConnect."""

import threading
import urllib.parse

from anki.collection import Collection

import notes
from anki_server import download_collection, notes_in, upload_collection
from helpers import card, wait_until
from test_ankiconnect import Client, start_with_ankiconnect

DECK = "English Vocabulary"


def made(service, body):
    """Post a card and wait for its job: the finished job."""
    status, answer = service.post_card(body)
    assert status == 202, answer
    job, _ = service.wait(answer["taskId"])
    assert job["status"] == "success", job
    return job


def lookup(service, word, token=True):
    """(status, body) of GET /api/v1/notes?word=..."""
    status, _, body = service.call("GET", "/api/v1/notes?word=" + urllib.parse.quote(word),
                                   token=token)
    return status, body


def found(service, word):
    status, body = lookup(service, word)
    assert status == 200, body
    return body["notes"]


def refused(word, n=99):
    return {**card(n, word=word), "onDuplicate": "refuse"}


def task_count(service):
    status, _, body = service.call("GET", "/api/v1/tasks?limit=100")
    assert status == 200, body
    return len(body["tasks"])


def test_the_lookup_lists_the_notes_made_case_and_spacing_aside(service):
    first = made(service, card(1, word="Extraordinary"))
    second = made(service, card(2, word="extraordinary"))  # a second meaning: allowed
    made(service, card(3, word="ordinary"))
    listed = found(service, "  EXTRAORDINARY ")
    assert listed == [
        {"noteId": first["result"]["noteId"], "deck": DECK,
         "sentence": card(1, word="Extraordinary")["englishExample"],
         "created": listed[0]["created"], "taskId": first["taskId"]},
        {"noteId": second["result"]["noteId"], "deck": DECK,
         "sentence": card(2, word="extraordinary")["englishExample"],
         "created": listed[1]["created"], "taskId": second["taskId"]}]
    assert listed[0]["created"] <= listed[1]["created"] and listed[0]["created"].endswith("Z")
    assert listed[0]["created"][:10] == first["createdAt"][:10]
    # the word as the note holds it, not a part of it or a longer one
    assert found(service, "ordinary")[0]["noteId"] not in {n["noteId"] for n in listed}
    assert found(service, "extra") == [] and found(service, "extraordinary story") == []
    # Unicode: the same word composed or decomposed, in another case
    cafe = made(service, card(4, word="Caf\u00e9"))
    assert [n["noteId"] for n in found(service, "CAFE\u0301")] == [cafe["result"]["noteId"]]


def test_a_note_added_on_another_device_shows_once_the_service_has_synced(
        make_service, sync_server, account, tmp_path):
    service = make_service(ANKISYNC_SYNC_INTERVAL=1)
    service.sync_login(account)
    ours = made(service, card(1, word="first"))
    wait_until(lambda: service.job(ours["taskId"])["result"]["synced"], service.logs)
    phone = download_collection(tmp_path / "phone", sync_server.url, account, "pass")
    try:
        note = phone.new_note(phone.models.by_name(notes.NOTETYPE_NAME))
        note["Word"], note["Text"] = "<b>Serendipity</b>", "Pure {{c1::serendipity}}."
        phone.add_note(note, phone.decks.id("Phone words"))
        phone.sync_collection(phone.sync_login(account, "pass", sync_server.url),
                              sync_media=False)
    finally:
        phone.close()
    # the periodic sync pulls it, and the index follows
    listed = wait_until(lambda: found(service, "serendipity"),
                        lambda: "the phone's note in the lookup:\n" + service.logs())
    assert listed == [{"noteId": note.id, "deck": "Phone words",
                       "sentence": "Pure {{c1::serendipity}}.", "created": listed[0]["created"],
                       "taskId": None}]
    status, body = service.post_card(refused("serendipity"))
    assert status == 409 and body["noteIds"] == [note.id], body
    # ours is still there, with its task
    assert [n["taskId"] for n in found(service, "first")] == [ours["taskId"]]


def test_a_note_deleted_through_ankiconnect_leaves_the_lookup(make_service, account):
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    ankiconnect = Client(service.ac_port)
    kept, gone = made(service, card(1, word="keep")), made(service, card(2, word="ephemeral"))
    assert [n["noteId"] for n in found(service, "Ephemeral")] == [gone["result"]["noteId"]]
    ankiconnect("deleteNotes", notes=[gone["result"]["noteId"]])
    assert found(service, "ephemeral") == []
    assert [n["noteId"] for n in found(service, "keep")] == [kept["result"]["noteId"]]
    # with its note gone, refuse lets the word in again
    assert service.post_card(refused("ephemeral"))[0] == 202
    # a Custom Cloze note an AnkiConnect client adds shows after the sync it queues
    note_id = ankiconnect("addNote", note={
        "deckName": "Default", "modelName": notes.NOTETYPE_NAME,
        "fields": {"Word": "Quixotic", "Text": "A {{c1::quixotic}} plan."}})
    listed = wait_until(lambda: found(service, "quixotic"),
                        lambda: "the AnkiConnect note in the lookup:\n" + service.logs())
    assert [(n["noteId"], n["deck"]) for n in listed] == [(note_id, "Default")]
    # ankisync keeps a task for a note AnkiConnect added (it re-adds it after a download)
    assert service.job(listed[0]["taskId"])["status"] == "success"


def test_ankiconnect_changes_the_index_cannot_hold_leave_it_uncompared(make_service, account):
    # Yomitan, asbplayer, mpvacious and Obsidian add and edit notes of their own types,
    # and tag them: the index holds neither. The sync each queues must not compare the
    # whole index with the collection (it reads every Custom Cloze note, holding the
    # collection: 0.2-0.4 s at 30,000, bench/README.md)
    service = start_with_ankiconnect(make_service)
    service.sync_login(account)
    ankiconnect = Client(service.ac_port)
    kept = made(service, card(1, word="anchor"))
    compared = service.logs().count("duplicate index:")
    # first, while no sync runs: a sync compares all when the Custom Cloze notes moved
    # while it ran (it cannot tell who moved them), and a tag moves its note's mod
    ankiconnect("addTags", notes=[kept["result"]["noteId"]], tags="mined")
    basic = ankiconnect("addNotes", notes=[{"deckName": "Default", "modelName": "Basic",
                                            "fields": {"Front": f"looked up {n}", "Back": "x"}}
                                           for n in range(2)])
    ankiconnect("addNote", note={"deckName": "Default", "modelName": "Basic",
                                 "fields": {"Front": "one more", "Back": "x"}})
    ankiconnect("updateNoteFields", note={"id": basic[0], "fields": {"Back": "sentence"}})
    ankiconnect("updateNoteTags", note=basic[1], tags=["kept"])
    # the syncs the changes queued, or this one after them: any of them compares a stale
    # index before this call returns (it waits for the collection and the sync lock)
    assert ankiconnect("sync")["synced"] is True
    assert service.logs().count("duplicate index:") == compared, service.logs()
    assert [n["noteId"] for n in found(service, "anchor")] == [kept["result"]["noteId"]]
    # a Custom Cloze note among the added, or its fields edited, still makes the next
    # sync compare it all, and the lookup follows
    ids = ankiconnect("addNotes", notes=[
        {"deckName": "Default", "modelName": "Basic", "fields": {"Front": "b", "Back": "x"}},
        {"deckName": "Default", "modelName": notes.NOTETYPE_NAME,
         "fields": {"Word": "Laconic", "Text": "A {{c1::laconic}} reply."}}])
    ankiconnect("sync")
    assert service.logs().count("duplicate index:") == compared + 1, service.logs()
    assert [n["noteId"] for n in found(service, "laconic")] == [ids[1]]
    ankiconnect("updateNoteFields", note={"id": ids[1], "fields": {"Word": "Terse"}})
    ankiconnect("sync")
    assert service.logs().count("duplicate index:") == compared + 2, service.logs()
    assert found(service, "laconic") == []
    assert [n["noteId"] for n in found(service, "terse")] == [ids[1]]


def test_refuse_answers_409_with_the_note_and_makes_no_job(service):
    job = made(service, card(1, word="Gleeful"))
    before = task_count(service)
    status, body = service.post_card(refused(" gleeful "))
    assert status == 409, body
    assert body["noteIds"] == [job["result"]["noteId"]] and body["taskIds"] == [], body
    assert "gleeful" in body["message"] and '"onDuplicate": "allow"' in body["message"]
    assert task_count(service) == before
    # a second meaning is still possible, with allow or without the field
    for extra in ({"onDuplicate": "allow"}, {}):
        status, body = service.post_card({**card(2, word="gleeful"), **extra})
        assert status == 202, body
    # a word no note holds passes refuse
    assert made(service, refused("glum"))["status"] == "success"


def test_refuse_while_a_job_for_the_word_still_waits(service, fake_tts):
    fake_tts.hold()
    try:
        first = service.post_card(card(1))[1]
        fake_tts.wait_held()  # the worker is busy speaking the first card
        waiting = service.post_card(card(2, word="Pending"))[1]
        assert service.job(waiting["taskId"])["status"] == "pending"
        status, body = service.post_card(refused("pending"))
        assert status == 409, body
        assert body == {**body, "noteIds": [], "taskIds": [waiting["taskId"]]}
    finally:
        fake_tts.release()
    for task in (first, waiting):
        assert service.wait(task["taskId"])[0]["status"] == "success"
    status, body = service.post_card(refused("PENDING"))
    assert status == 409 and body["taskIds"] == [], body
    assert body["noteIds"] == [service.job(waiting["taskId"])["result"]["noteId"]]


def test_concurrent_refuse_posts_of_one_new_word_make_one_card(
        make_service, sync_server, account, tmp_path):
    service = make_service()
    service.sync_login(account)
    service.login()
    start, answers = threading.Barrier(20), []

    def post(n):
        start.wait()
        answers.append(service.post_card(refused("simultaneous", n)))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [202] + [409] * 19, answers
    accepted = next(body for status, body in answers if status == 202)
    for status, body in answers:
        if status == 409:  # the one job, waiting or done
            assert body["taskIds"] == [accepted["taskId"]] or body["noteIds"], body
    job, _ = service.wait(accepted["taskId"])
    assert job["status"] == "success", job
    wait_until(lambda: service.job(accepted["taskId"])["result"]["synced"], service.logs)
    witness = download_collection(tmp_path / "witness", sync_server.url, account, "pass")
    try:
        words = [note["fields"]["Word"] for note in notes_in(witness)]
    finally:
        witness.close()
    assert words == ["simultaneous"]
    assert task_count(service) == 1


def test_a_bad_on_duplicate_is_400_naming_it(service):
    for value in ("Refuse", "", None, 1, ["refuse"], {"refuse": True}):
        status, body = service.post_card({**card(1), "onDuplicate": value})
        assert status == 400, (value, body)
        assert "onDuplicate" in body["message"] and "onDuplicate" in body["errors"], body
    assert task_count(service) == 0


def test_the_lookup_needs_a_token_and_a_word(service):
    assert lookup(service, "word", token=False)[0] == 401
    assert lookup(service, "word", token="not-a-token")[0] == 401
    for path in ("/api/v1/notes", "/api/v1/notes?word=", "/api/v1/notes?word=%20%20",
                 "/api/v1/notes?other=x", "/api/v1/notes?word=%ff"):
        status, _, body = service.call("GET", path)
        assert status == 400 and "word" in body["message"], (path, body)
    status, body = lookup(service, "x" * 201)
    assert status == 400 and "too long" in body["message"], body
    assert lookup(service, "x" * 200) == (200, {"word": "x" * 200, "notes": []})
    # the word is matched whole: no wildcard reads the rest of the collection
    made(service, card(1, word="wildcard"))
    for pattern in ("%", "_ildcard", "wild%", "*", "' OR '1'='1"):
        assert lookup(service, pattern) == (200, {"word": pattern, "notes": []}), pattern


def collection_with_a_note(folder, word, deck):
    """A collection at folder holding one Custom Cloze note (made as another Anki would)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    col = Collection(str(folder / "collection.anki2"))
    note = col.new_note(notes.ensure_notetype(col))
    note["Word"], note["Text"] = word, f"An old {{{{c1::{word}}}}}."
    col.add_note(note, col.decks.id(deck))
    return col, note.id


def test_a_collection_from_before_the_index_is_indexed_at_start(make_service):
    service = make_service(start=False)
    col, note_id = collection_with_a_note(service.data_dir, "Heirloom", "Old deck")
    col.close()
    service.start()
    assert wait_until(lambda: found(service, "heirloom"), service.logs) == [
        {"noteId": note_id, "deck": "Old deck", "sentence": "An old {{c1::Heirloom}}.",
         "created": found(service, "heirloom")[0]["created"], "taskId": None}]


def test_a_full_download_is_indexed(make_service, sync_server, account, tmp_path):
    """The server holds another device's collection: the first card's sync takes it whole."""
    phone, note_id = collection_with_a_note(tmp_path / "phone", "Keepsake", "Phone words")
    try:
        upload_collection(phone, sync_server.url, account, "pass")
    finally:
        phone.close()
    service = make_service()
    service.sync_login(account)
    made(service, card(1, word="fresh"))
    assert [(n["noteId"], n["deck"]) for n in found(service, "keepsake")] == [
        (note_id, "Phone words")]
    assert len(found(service, "fresh")) == 1
