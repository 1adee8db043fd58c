"""Deletions that outlive a full download: what AnkiConnect deleted stays deleted.

A full download replaces the local collection with the server's copy, which still
holds every note whose deletion had not been synced yet. So each deletion is recorded
in the job table before the notes go: the jobs that added any of them no longer re-add
them, and a record of kind "deletion" (guids, whoever made the notes: this service,
another device, an import) is what `readd` turns into deleting them again after the
download. Like any job it is purged once synced; then the server has the deletion too.
"""

import json

import config
import duplicates
import jobs
from ankiconnect.dispatch import ActionError
from notes import note_guid

KIND = "deletion"


def guids_of(col, note_ids):
    """The guids of the notes among note_ids that exist; refuses ids that are not numbers
    (before anything is recorded or deleted)."""
    if not all(isinstance(note_id, int) and not isinstance(note_id, bool) for note_id in note_ids):
        raise ActionError("notes must be a list of note ids (whole numbers)")
    guids = set()
    for start in range(0, len(note_ids), 500):  # under SQLite's limit of bound values
        batch = note_ids[start:start + 500]
        guids.update(col.db.list(
            f"select guid from notes where id in ({', '.join('?' * len(batch))})", *batch))
    return guids


def remove_notes(context, col, note_ids):
    """Delete the notes, remembering them first (the caller holds the collection lock)."""
    if not isinstance(note_ids, list):
        raise ActionError("notes must be a list of note ids (whole numbers)")
    guids = guids_of(col, note_ids)
    path = config.db_path(context.settings)
    duplicates.forget(path, note_ids)  # the duplicate check no longer finds them
    if guids:
        jobs.mark_deleted(path, [job["id"] for job in jobs.added(path)
                                 if note_guid(job["id"]) in guids])
        jobs.create_done(path, KIND, {"deleteGuids": sorted(guids)},
                         {"deletedNotes": len(guids)})
    col.remove_notes(note_ids)


def redelete(col, job):
    """After a full download: delete again the notes a deletion record names."""
    guids, found = json.loads(job["request"])["deleteGuids"], []
    for start in range(0, len(guids), 500):
        batch = guids[start:start + 500]
        found += col.db.list(
            f"select id from notes where guid in ({', '.join('?' * len(batch))})", *batch)
    col.remove_notes(found)
    return len(found)
