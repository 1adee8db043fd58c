"""A 50,000-note, 20,000-media collection against an empty one (issue 17).

    .venv/bin/python bench/big_collection.py --make DIR [--notes 50000 --media 20000]
    .venv/bin/python bench/big_collection.py --runs 5 [--cache DIR]

--make DIR writes DIR/collection.anki2 and DIR/collection.media with anki's own
API, in one transaction: 60% "Custom Cloze" notes (ankisync's own note type,
notes.py), a third of them with two `[sound:...]` clips each, and 40% Basic
notes; every clip a distinct small MP3 (silent frames, the file's number in
their ancillary bytes, so every hash differs).

The bench, in the rig (bench/common.py: Anki's sync server behind the delay
proxy at --rtt, the fake Google TTS at --tts-delay), compares two installs in
the steady state a user sees: the collection and its media already on the sync
server, the worker stopped and started again. Each is prepared once (--cache
keeps them across invocations): made, uploaded whole and media-synced straight
to a sync server of its own (no delay: 20,000 files), then started once under
ankisync, which builds its duplicate index and sends one warm-up card, and
stopped. Each run then copies both the data dir and the server's user folder
(media files hard-linked, databases copied) into a fresh account of the rig's
sync server, and measures, empty and big in turn:

  ready: from `./run.sh` until AnkiConnect `version` answers and
    /api/v1/health says the worker is alive with AnkiConnect listening;
  worker memory: RSS and PSS of the worker process that holds the collection
    (the Huey process worker), at ready and after the burst;
  first action: the first AnkiConnect `findNotes` after ready, which opens
    the collection;
  findNotes: all notes (`deck:*`) and a word search, median of 5 each, idle;
  burst-20: after `./run.sh login` and its sync, and one warm-up card, 20
    cards posted back to back until every job is `success` and synced;
  addNote-synced: an AnkiConnect `addNote` (as Yomitan sends) until the sync
    it queues has ended (the worker's last sync time moved) and the collection
    is free again (a `findNotes` answers: it waits for the duplicate index's
    comparison that follows such a sync).

Prints one line per measure: big, empty, and their ratio (medians of --runs).
"""

import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import burst
import common

sys.path.insert(0, str(common.ROOT))  # notes.py, for the note type

from anki_server import SyncServer, free_port  # noqa: E402
from service import Service, wait_until  # noqa: E402

NOTES, MEDIA = 50_000, 20_000
SEARCH_WORD = "serendipity"  # one note of the big collection holds it
QUERIES = {"findNotes-all": "deck:*", "findNotes-word": SEARCH_WORD}
PREP_USER = "prep"

# --- the collection -----------------------------------------------------------------

# MPEG-1 Layer III, 32 kbit/s, 44.1 kHz, mono: a 104-byte frame. All-zero side
# information means no audio data: the rest of the frame is ancillary bytes, which
# decoders skip. Each frame is 26 ms of silence.
_FRAME_HEADER = bytes.fromhex("fffb10c4")
_FRAME_BYTES = 104
_FRAMES = 24  # 0.63 s, 2.5 kB: a short spoken word


def silent_mp3(serial):
    """A short silent MP3 whose bytes no other serial's share."""
    frame = _FRAME_HEADER + bytes(_FRAME_BYTES - len(_FRAME_HEADER))
    mark = f"ankisync bench clip {serial}".encode()
    last = frame[:_FRAME_BYTES - len(mark)] + mark
    return frame * (_FRAMES - 1) + last


_SYLLABLES = ("ka ri to mo ne sa lu vi de pa go ti ran sel mor quin bra the"
              " ost ul em ar in ex pro con dis").split()


def word_for(rng, n):
    """A made-up word, unique by its number."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) + f"{n:x}"


def make(data_dir, notes=NOTES, media=MEDIA, seed=17):
    """DATA_DIR/collection.anki2 with `notes` notes and collection.media with `media` clips.

    Returns {"seconds", "notes", "media", "bytes"}. One anki transaction for all the notes.
    """
    import notes as ankisync_notes  # our note type, made as the worker makes it
    from anki.collection import AddNoteRequest, Collection

    began = time.monotonic()
    rng = random.Random(seed)
    data_dir = Path(data_dir)
    media_dir = data_dir / "collection.media"
    media_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    col = Collection(str(data_dir / "collection.anki2"))
    written = 0
    try:
        cloze = ankisync_notes.ensure_notetype(col)
        basic = col.models.by_name("Basic")
        vocab = col.decks.id("English Vocabulary")
        default = col.decks.id("Default")
        clozes = notes * 6 // 10
        with_audio = min(clozes, media // 2)
        requests, serial = [], 0
        for n in range(notes):
            word = SEARCH_WORD if n == 1 else word_for(rng, n)
            if n < clozes:
                note = col.new_note(cloze)
                note["Word"] = word
                note["Text"] = (f"They said the <b>{{{{c1::{word}}}}}</b> was the best part"
                                f" of day {n}.")
                note["TextTranslation"] = f"Sie sagten, es war der beste Teil von Tag {n}."
                note["EnDefinition"] = f"the thing numbered {n}, in a made-up sense"
                note["PartOfSpeech"] = rng.choice(("noun", "verb", "adjective", "adverb"))
                note["CefrLevel"] = rng.choice(("A2", "B1", "B2", "C1", ""))
                if n < with_audio:
                    for field in ("DefinitionAudio", "TextAudio"):
                        name = "ankisync-%s.mp3" % hashlib.sha256(
                            f"bench {serial}".encode()).hexdigest()[:24]
                        clip = silent_mp3(serial)
                        (media_dir / name).write_bytes(clip)
                        written += len(clip)
                        note[field] = f"[sound:{name}]"
                        serial += 1
                requests.append(AddNoteRequest(note=note, deck_id=vocab))
            else:
                note = col.new_note(basic)
                note["Front"] = word
                note["Back"] = f"back of note {n}: some text of the size a real card has"
                requests.append(AddNoteRequest(note=note, deck_id=default))
        while serial < media:  # files no note uses yet, as Anki keeps them
            name = f"unused-{serial}.mp3"
            clip = silent_mp3(serial)
            (media_dir / name).write_bytes(clip)
            written += len(clip)
            serial += 1
        col.add_notes(requests)
    finally:
        col.close()
    return {"seconds": time.monotonic() - began, "notes": notes, "media": serial,
            "bytes": written}


# --- preparing the steady state ----------------------------------------------------------

def _upload(data_dir, server_url, username):
    """Full upload, then the whole media sync, with anki's own API (no ankisync)."""
    from anki.collection import Collection
    from anki.sync import SyncOutput
    col = Collection(str(Path(data_dir) / "collection.anki2"))
    try:
        auth = col.sync_login(username, "pass", server_url)
        out = col.sync_collection(auth, sync_media=False)
        if out.required != SyncOutput.NO_CHANGES:
            col.close_for_full_sync()
            col.full_upload_or_download(auth=auth, server_usn=None, upload=True)
            col.reopen(after_full_sync=True)
        col.sync_media(auth)
        while col.media_sync_status().active:  # raises the media sync's error, if any
            time.sleep(0.2)
    finally:
        col.close()


def _link_or_copy(src, dst):
    # media files are written once and never changed in place: a hard link is a copy
    if Path(src).suffix == ".mp3":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def copy_tree(src, dst):
    shutil.copytree(src, dst, copy_function=_link_or_copy)


def settings_for(rig, **extra):
    """What Rig.service gives an install, plus extra."""
    return {"ANKISYNC_SYNC_ENDPOINT": rig.sync_url, "ANKISYNC_GOOGLE_API_KEY": common.GOOGLE_KEY,
            "ANKISYNC_GOOGLE_TTS_ENDPOINT": rig.tts_url, "ANKISYNC_LOG_LEVEL": "INFO",
            "ANKISYNC_RETRY_DELAY": None, "ANKISYNC_RETRY_MAX_DELAY": None,
            "ANKISYNC_CARD_BURST": 100_000, "ANKISYNC_MAX_QUEUED": 100_000, **extra}


def prepare(rig, cache, name, notes, media):
    """cache/name/{data, server, api_key}: a used install and its sync account, made once."""
    folder = Path(cache) / name
    if (folder / "done").exists():
        print(f"# {name}: reusing {folder}", file=sys.stderr, flush=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = folder / "data"
    made = make(data, notes, media)
    print(f"# {name}: made {made['notes']} notes and {made['media']} clips"
          f" ({made['bytes'] / common.MiB:.0f} MiB) in {made['seconds']:.1f} s",
          file=sys.stderr, flush=True)
    with SyncServer(folder / "syncserver", {PREP_USER: "pass"}) as server:
        began = time.monotonic()
        _upload(data, server.url, PREP_USER)
        print(f"# {name}: full upload and media sync in {time.monotonic() - began:.1f} s",
              file=sys.stderr, flush=True)
        # ankisync once: its duplicate index, its tables, a warm-up card through it all
        service = Service(data, **settings_for(rig, ANKISYNC_SYNC_ENDPOINT=server.url))
        try:
            service.start(timeout=300)
            service.login()
            service.sync_login(PREP_USER)
            burst.warm_up(service)
        finally:
            service.stop()
            service.kill()
        (folder / "api_key").write_text(service.api_key)
    shutil.move(folder / "syncserver" / PREP_USER, folder / "server")
    shutil.rmtree(folder / "syncserver")
    (folder / "done").write_text("")
    return folder


# --- measuring -------------------------------------------------------------------------

def ankiconnect(port, action, **params):
    body = json.dumps({"action": action, "version": 6, "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=300) as answer:
        reply = json.loads(answer.read())
    if reply["error"]:
        raise RuntimeError(f"{action}: {reply['error']}")
    return reply["result"]


def timed(port, action, **params):
    began = time.perf_counter()
    result = ankiconnect(port, action, **params)
    return time.perf_counter() - began, result


def ready(service, port):
    """AnkiConnect answers `version` and /health says the worker is up and listening."""
    try:
        ankiconnect(port, "version")
    except OSError:
        return False
    status, _, body = service.call("GET", "/api/v1/health")
    return (status == 200 and body["worker"]["alive"]
            and body["ankiconnect"]["state"] == "listening")


def collection_holder(service):
    """The pid of the group's process that has anki loaded (the Huey process worker)."""
    for pid in common.group_pids(service):
        if "_rsbridge" in common._read(f"/proc/{pid}/maps"):
            return pid
    raise RuntimeError("no process of the service has anki loaded")


def last_sync(service):
    """When the worker's last sync ended, to the microsecond (/health gives whole seconds)."""
    with contextlib.closing(sqlite3.connect(
            f"file:{service.data_dir / 'ankisync.db'}?mode=ro", uri=True, timeout=10)) as conn:
        row = conn.execute("SELECT value FROM ankisync_state WHERE key = 'last_sync_at'"
                           ).fetchone()
    return row and row[0]


def worker_memory(service):
    rss, pss = common.memory([collection_holder(service)]).popitem()[1]
    return rss / common.MiB, pss / common.MiB


def measure(rig, prepared, account, name):
    """One install copied from `prepared`, started and measured; {measure: number}."""
    data = rig.workdir / name
    copy_tree(prepared / "data", data)
    port = free_port()
    service = Service(data, **settings_for(rig, ANKISYNC_ANKICONNECT_LISTEN=f"127.0.0.1:{port}"))
    service.api_key = (prepared / "api_key").read_text()
    rig.services.append(service)
    results = {}
    try:
        began = time.monotonic()
        service.start(timeout=300)
        service.login()
        wait_until(lambda: ready(service, port), "AnkiConnect and the worker", 300, every=0.01)
        results["ready"] = time.monotonic() - began
        results["rss-ready"], results["pss-ready"] = worker_memory(service)
        results["first-findNotes"], _ = timed(port, "findNotes", query=SEARCH_WORD)
        for measure_name, query in QUERIES.items():
            timed(port, "findNotes", query=query)  # warm
            times = [timed(port, "findNotes", query=query)[0] for _ in range(5)]
            results[measure_name] = statistics.median(times)
        results["notes-found"] = len(ankiconnect(port, "findNotes", query="deck:*"))
        # log into this run's account; the sync the login queues runs first
        last = last_sync(service)
        service.sync_login(account)
        wait_until(lambda: last_sync(service) != last, "the sync after login", 300)
        burst.warm_up(service)
        done = burst.burst(service, 20, 300)
        if done["failed"] or done["timed_out"]:
            raise RuntimeError(f"{name}: the burst did not end synced: {done}")
        results["burst-20"] = done["seconds"]
        results["rss-after"], results["pss-after"] = worker_memory(service)
        # a Yomitan-style add: AnkiConnect addNote, then the sync it queues, to its end
        last = last_sync(service)
        began = time.monotonic()
        ankiconnect(port, "addNote", note={
            "deckName": "Default", "modelName": "Basic", "options": {"allowDuplicate": True},
            "fields": {"Front": f"added over AnkiConnect in {name}", "Back": "x"}})
        wait_until(lambda: last_sync(service) != last, "the sync after addNote", 300,
                   every=0.01)
        # the last sync time is written before the duplicate index is compared with the
        # collection (which an AnkiConnect change asks for): an action waits for both
        ankiconnect(port, "findNotes", query=SEARCH_WORD)
        results["addNote-synced"] = time.monotonic() - began
    finally:
        rig.stop(service)
    if not rig.keep:
        shutil.rmtree(data, ignore_errors=True)
    return results


LINES = {
    "ready": ("worker start to ready", "s"),
    "rss-ready": ("worker RSS at ready", "MiB"),
    "pss-ready": ("worker PSS at ready", "MiB"),
    "first-findNotes": ("first findNotes after ready (opens the collection)", "s"),
    "findNotes-all": ("findNotes deck:* (all notes), median of 5", "s"),
    "findNotes-word": (f"findNotes {SEARCH_WORD} (a word), median of 5", "s"),
    "burst-20": ("20-card burst to all synced", "s"),
    "rss-after": ("worker RSS after the burst", "MiB"),
    "pss-after": ("worker PSS after the burst", "MiB"),
    "addNote-synced": ("AnkiConnect addNote to the end of the sync it queues, collection free", "s"),
}


def _fmt(value, unit):
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.1f} {unit}"


def report(runs, json_path=None):
    """One line per measure: big, empty, big/empty (medians over the runs)."""
    for key, (label, unit) in LINES.items():
        big = statistics.median(run["big"][key] for run in runs)
        empty = statistics.median(run["empty"][key] for run in runs)
        ratio = big / empty if empty else float("inf")
        flag = "" if ratio <= 1.2 else "  > 1.2x"
        print(f"{key}: big {_fmt(big, unit)}, empty {_fmt(empty, unit)}, ratio {ratio:.2f}"
              f"{flag}  ({label}; median of {len(runs)})", flush=True)
        for number, run in enumerate(runs, 1):
            print(f"    run {number}: big {_fmt(run['big'][key], unit)},"
                  f" empty {_fmt(run['empty'][key], unit)}", file=sys.stderr, flush=True)
    if json_path:
        with open(json_path, "a") as out:
            out.write(json.dumps({"measure": "big-collection", "runs": runs}) + "\n")


def main():
    parser = common.arg_parser(__doc__.splitlines()[0], runs=3)
    parser.add_argument("--make", metavar="DIR",
                        help="only write the collection into DIR (collection.anki2 and"
                             " collection.media), then stop")
    parser.add_argument("--notes", type=int, default=NOTES, help="notes (default %(default)s)")
    parser.add_argument("--media", type=int, default=MEDIA,
                        help="media files (default %(default)s)")
    parser.add_argument("--cache", help="keep the prepared installs and sync accounts here and"
                        " reuse them next time (default: made anew in the work dir)")
    args = parser.parse_args()
    if 2 * args.runs > common.ACCOUNTS:
        parser.error(f"--runs: at most {common.ACCOUNTS // 2} (two sync accounts a run)")
    if args.make:
        made = make(args.make, args.notes, args.media)
        print(f"{made['notes']} notes, {made['media']} media files"
              f" ({made['bytes'] / common.MiB:.0f} MiB) in {args.make} in"
              f" {made['seconds']:.1f} s")
        return
    print(f"# {common.machine()}", file=sys.stderr, flush=True)
    with common.Rig(args.rtt, args.tts_delay, args.workdir, args.keep) as rig:
        cache = Path(args.cache) if args.cache else rig.workdir / "prepared"
        sizes = {"empty": (0, 0), "big": (args.notes, args.media)}
        # named for their size, so that a --cache made with other sizes is not taken
        prepared = {kind: prepare(rig, cache, f"notes{size[0]}-media{size[1]}", *size)
                    for kind, size in sizes.items()}
        # each run's copy of each server account, in place before the server reads it
        accounts = {}
        rig.sync_server.stop()
        for number in range(args.runs):
            for kind in sizes:
                account = f"user{common.ACCOUNTS - len(accounts)}"
                target = rig.sync_server.base / account
                shutil.rmtree(target, ignore_errors=True)
                copy_tree(prepared[kind] / "server", target)
                accounts[number, kind] = account
        rig.sync_server.start()
        runs = []
        for number in range(args.runs):
            # alternate the order, so a slow spell of the machine falls on both
            order = ("empty", "big") if number % 2 == 0 else ("big", "empty")
            run = {kind: measure(rig, prepared[kind], accounts[number, kind],
                                 f"{kind}{number}") for kind in order}
            print(f"# run {number + 1}: {json.dumps(run)}", file=sys.stderr, flush=True)
            runs.append(run)
    report(runs, args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
