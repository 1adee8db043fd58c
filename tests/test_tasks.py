"""The task routes a client follows up with: list, retry, cancel, and the
Idempotency-Key that makes a retried POST the same task."""

import pytest

from helpers import card, wait_for_log


def test_same_idempotency_key_with_another_card_is_a_conflict(service):
    headers = {"Idempotency-Key": "retry-me-1"}
    status, _, first = service.call("POST", "/api/v1/clozeNotes", card(1), headers=headers)
    assert status == 202
    status, _, again = service.call("POST", "/api/v1/clozeNotes", card(1), headers=headers)
    assert status == 200 and again["taskId"] == first["taskId"]
    status, _, other = service.call("POST", "/api/v1/clozeNotes", card(2), headers=headers)
    assert status == 409 and "Idempotency-Key" in other["message"]


def test_failed_jobs_are_listed_retried_and_pending_ones_cancelled(make_service, fake_tts):
    service = make_service()
    fake_tts.valid_keys = {"another-key"}
    failed = service.wait(service.post_card()[1]["taskId"])[0]
    assert failed["status"] == "failure"
    status, _, page = service.call("GET", "/api/v1/tasks?status=failure&limit=1")
    assert status == 200 and [t["taskId"] for t in page["tasks"]] == [failed["taskId"]]
    assert service.call("GET", "/api/v1/tasks?status=nope")[0] == 400

    fake_tts.valid_keys = None
    status, _, body = service.call("POST", f"/api/v1/tasks/{failed['taskId']}/retry")
    assert status == 202 and body["status"] in ("pending", "started", "success")
    assert service.wait(failed["taskId"])[0]["status"] == "success"
    assert service.call("POST", f"/api/v1/tasks/{failed['taskId']}/retry")[0] == 409

    fake_tts.hold()  # keep the worker busy, so the next job waits in the queue
    busy = service.post_card(card(2))[1]["taskId"]
    fake_tts.wait_held()  # busy is claimed and speaking: the next job cannot join it
    waiting = service.post_card(card(3))[1]["taskId"]
    status, _, body = service.call("DELETE", f"/api/v1/tasks/{waiting}")
    assert status == 200 and body["status"] == "failure" and body["error"]["type"] == "Cancelled"
    service.wait(busy, until=("started", "success"))
    assert service.call("DELETE", f"/api/v1/tasks/{busy}")[0] == 409
    fake_tts.release()
    assert service.wait(busy)[0]["status"] == "success"
    wait_for_log(service, f"job {waiting}: nothing to do")
    assert service.job(waiting)["status"] == "failure"  # the worker skipped it

    status, _, page = service.call("GET", "/api/v1/tasks?limit=2")
    assert [t["taskId"] for t in page["tasks"]] == [waiting, busy] and page["next"] == busy
    status, _, rest = service.call("GET", f"/api/v1/tasks?limit=2&before={page['next']}")
    assert [t["taskId"] for t in rest["tasks"]] == [failed["taskId"]] and rest["next"] is None


@pytest.mark.slow
def test_cancel_is_refused_once_the_note_is_added(make_service, sync_server, account):
    service = make_service()
    service.sync_login(account)
    sync_server.stop()
    try:
        task_id = service.post_card()[1]["taskId"]
        job, _ = service.wait(task_id, until=("retrying",))
        assert job["error"]["type"] == "SyncUnavailable", job
        status, _, body = service.call("DELETE", f"/api/v1/tasks/{task_id}")
        assert status == 409 and "already in the collection" in body["message"], body
        assert service.job(task_id)["status"] in ("retrying", "started")
    finally:
        sync_server.start()
    job, _ = service.wait(task_id)
    assert job["status"] == "success" and job["result"]["synced"], job

