"""What the duplicate check costs on a collection of 10,000 Custom Cloze notes.

    python bench/duplicates.py --notes 10000 --repeats 50

Builds a fresh data dir whose collection holds --notes Custom Cloze notes (made
with anki's API before the start; every 100th word has two notes), starts
ankisync through ./run.sh (no sync server, no voice needed), and prints:
  index-build: seconds the worker took to index the collection at its start
               (from its log line), and from start until the lookup finds a word;
  lookup-hit / lookup-miss: median, p90 and max milliseconds of
               GET /api/v1/notes?word=... on one keep-alive connection, for a
               word with two notes and for one with none;
  refuse-409: the same for POST /api/v1/clozeNotes with "onDuplicate": "refuse"
               of a word the collection holds (the check runs in the job's
               write transaction);
  table-read: milliseconds of duplicates.lookup alone, in this process;
  after-sync: with the service stopped, milliseconds of what the worker adds
               to a sync (duplicates.fingerprint, twice) and of a refresh that
               finds nothing to write (duplicates.refresh), in this process.
Medians are over --repeats (at least 5).
"""

import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(common.ROOT))
import duplicates  # noqa: E402
import notes  # noqa: E402
from service import Service  # noqa: E402

BUILT = re.compile(r"duplicate index: (\d+) notes, \d+ written, \d+ removed in ([\d.]+)s")
SENTENCE = "She told the <b>{{{{c1::{}}}}}</b> story, and it took a while to tell it well."


def word(n):
    return f"bench{n - n % 2 if n % 100 < 2 else n}"  # 0 and 1 share a word, 100 and 101, ...


def make_collection(data_dir, count):
    """DATA_DIR/collection.anki2 with `count` Custom Cloze notes, made with anki's API."""
    from anki.collection import AddNoteRequest, Collection
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    col = Collection(str(data_dir / "collection.anki2"))
    try:
        notetype = notes.ensure_notetype(col)
        deck_id = notes.ensure_deck(col, "English Vocabulary")
        requests = []
        for n in range(count):
            note = col.new_note(notetype)
            note["Word"], note["Text"] = word(n), SENTENCE.format(word(n))
            note["EnDefinition"] = f"the {n}th word of a benchmark, with a definition of some length"
            requests.append(AddNoteRequest(note=note, deck_id=deck_id))
        col.add_notes(requests)
    finally:
        col.close()


def timed(call, repeats):
    """Milliseconds of each of `repeats` calls."""
    took = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        took.append((time.perf_counter() - began) * 1000)
    return took


def summary(name, took):
    return (f"{name}: median {statistics.median(took):.2f} ms, p90"
            f" {common.percentile(took, 90):.2f} ms, max {max(took):.2f} ms (n={len(took)})")


def expect(status, body, wanted):
    if status != wanted:
        raise RuntimeError(f"answered {status}, not {wanted}: {body}")
    return body


def main():
    parser = common.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    repeats = max(5, args.repeats)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ankisync-bench-duplicates-"))
    service = Service(workdir / "svc", ANKISYNC_LOG_LEVEL="INFO", ANKISYNC_TTS="none",
                      ANKISYNC_SYNC_ENDPOINT=None, ANKISYNC_CARD_BURST=100_000)
    hit, miss = word(100), "no-such-word"
    lines = []
    try:
        make_collection(service.data_dir, args.notes)
        began = time.monotonic()
        service.start(timeout=120)
        service.login()
        client = common.Client(service)
        deadline = time.monotonic() + 600
        built = []
        while not built:  # the worker indexes the collection at its start, and logs it
            built = BUILT.findall(service.logs())
            if time.monotonic() > deadline:
                raise RuntimeError("the index was not built within 600 s:\n" + service.logs())
            time.sleep(0.05)
        ready = time.monotonic() - began
        lines.append(f"index-build: {built[0][1]} s for {built[0][0]} notes in the worker;"
                     f" {ready:.1f} s from start until it was done")
        found = expect(*client.call("GET", f"/api/v1/notes?word={hit}"), 200)
        if len(found["notes"]) != 2:
            raise RuntimeError(f"{hit} should have two notes: {found}")
        lines.append(summary("lookup-hit", timed(
            lambda: expect(*client.call("GET", f"/api/v1/notes?word={hit}"), 200), repeats)))
        lines.append(summary("lookup-miss", timed(
            lambda: expect(*client.call("GET", f"/api/v1/notes?word={miss}"), 200), repeats)))
        card = {**common.card(), "word": hit, "englishExample": SENTENCE.format(hit),
                "onDuplicate": "refuse"}
        lines.append(summary("refuse-409", timed(
            lambda: expect(*client.call("POST", "/api/v1/clozeNotes", card), 409), repeats)))
        client.close()
        path = service.data_dir / "ankisync.db"
        lines.append(summary("table-read", timed(lambda: duplicates.lookup(path, hit), repeats)))
    finally:
        service.kill()
    deadline = time.monotonic() + 60
    if service.process is not None:
        service.process.wait(60)
    while service.process is not None and service.group_alive():  # the worker lets go of it
        if time.monotonic() > deadline:
            raise RuntimeError("ankisync's processes did not stop within 60 s")
        time.sleep(0.05)
    from anki.collection import Collection
    col = Collection(str(service.data_dir / "collection.anki2"))
    try:
        lines.append(summary("after-sync fingerprint x2", timed(
            lambda: (duplicates.fingerprint(col), duplicates.fingerprint(col)), repeats)))
        lines.append(summary("after-sync refresh, nothing to write", timed(
            lambda: duplicates.refresh(path, col), max(5, repeats // 10))))
    finally:
        col.close()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"duplicates notes={args.notes}:")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
