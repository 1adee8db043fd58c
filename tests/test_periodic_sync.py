"""ANKISYNC_SYNC_INTERVAL: the worker pulls what other devices synced, with no card posted."""

import sqlite3

from anki_server import download_collection, free_port, _accepts
from helpers import card, wait_until
from test_ankiconnect import Client


def phone_adds_a_note(tmp_path, sync_server, account, front):
    """Another device takes the server's collection, adds a Basic note, and syncs it up."""
    phone = download_collection(tmp_path / f"phone-{front}", sync_server.url, account, "pass")
    try:
        note = phone.new_note(phone.models.by_name("Basic"))
        note["Front"], note["Back"] = front, "added on the phone"
        phone.add_note(note, phone.decks.id("Default"))
        auth = phone.sync_login(account, "pass", sync_server.url)
        phone.sync_collection(auth, sync_media=False)
    finally:
        phone.close()


def with_ankiconnect(make_service, account, **settings):
    port = free_port()
    service = make_service(ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}", **settings)
    wait_until(lambda: _accepts(port), service.logs)
    service.sync_login(account)
    # its first card goes up (the server's copy is ours from then on)
    assert service.wait(service.post_card(card(1))[1]["taskId"])[0]["status"] == "success"
    return service, Client(port)


def periodic_syncs_waiting(service):
    """Periodic syncs in Huey's schedule or queue (one running is in neither)."""
    db = sqlite3.connect(service.data_dir / "ankisync.db")
    try:
        return sum(db.execute(f"SELECT count(*) FROM {table} WHERE CAST(data AS TEXT) LIKE ?",
                              ('%"periodic-sync"%',)).fetchone()[0]
                   for table in ("schedule", "task"))
    finally:
        db.close()


def one_periodic_sync_waits(service):
    """Never two; one, once the running one has scheduled the next."""
    seen = [periodic_syncs_waiting(service) for _ in range(20)]
    assert max(seen) <= 1, seen
    wait_until(lambda: periodic_syncs_waiting(service) == 1, service.logs)


def test_a_note_added_on_the_phone_shows_in_ankiconnect_with_no_card_posted(
        make_service, sync_server, account, tmp_path):
    service, ankiconnect = with_ankiconnect(make_service, account, ANKISYNC_SYNC_INTERVAL=1)
    phone_adds_a_note(tmp_path, sync_server, account, "from my phone")
    found = wait_until(lambda: ankiconnect("findNotes", query='"Front:from my phone"'),
                       lambda: "the phone's note through AnkiConnect:\n" + service.logs())
    assert len(found) == 1
    # its duplicate check sees it too: the same note from Yomitan is refused
    duplicate = {"deckName": "Default", "modelName": "Basic",
                 "fields": {"Front": "from my phone", "Back": "again"}}
    assert ankiconnect("canAddNotes", notes=[duplicate]) == [False]
    # one periodic sync waits at a time, however many have run, and across a restart
    one_periodic_sync_waits(service)
    service.stop()
    service.start()
    wait_until(lambda: "synced (" in service.logs().rpartition("worker running")[2],
               service.logs)
    one_periodic_sync_waits(service)


def test_off_by_default_nothing_is_scheduled_and_nothing_pulled(
        make_service, sync_server, account, tmp_path):
    service, ankiconnect = with_ankiconnect(make_service, account)
    phone_adds_a_note(tmp_path, sync_server, account, "not pulled")
    assert periodic_syncs_waiting(service) == 0
    assert ankiconnect("findNotes", query='"Front:not pulled"') == []
    # the next card's sync brings it, as before
    assert service.wait(service.post_card(card(2))[1]["taskId"])[0]["status"] == "success"
    assert len(ankiconnect("findNotes", query='"Front:not pulled"')) == 1


def test_with_anki_web_it_is_at_least_ten_minutes(make_service):
    service = make_service(start=False, ANKISYNC_SYNC_ENDPOINT="", ANKISYNC_SYNC_INTERVAL=60)
    result = service.cli("status")
    assert result.returncode == 1 and "ANKISYNC_SYNC_INTERVAL=60" in result.stderr
    assert "at least 600" in result.stderr
    service.env["ANKISYNC_SYNC_INTERVAL"] = "600"
    assert "ANKISYNC_SYNC_INTERVAL" not in service.cli("status").stderr
