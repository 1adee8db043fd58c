"""How long jobs took, as histograms: read from the job table, never counted in a process.

The web process's /metrics (metrics.py) reads them at each scrape, so what both
processes did is counted once, and nothing is lost when either restarts. Jobs are
purged (ANKISYNC_RESULT_TTL): the purge folds what it deletes into totals kept in
the same file first, in the same transaction, so each histogram only ever grows.
"""

import bisect
import itertools
import json

import db

# Upper bounds in seconds: a card takes about a second on a Pi, a slow sync a minute,
# a job waiting for its retries or for the sync login hours.
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 21600)
# name -> the duration in SQL, NULL for the jobs it does not apply to
HISTOGRAMS = {
    # accepted to finished, for the cards of the REST API (AnkiConnect's notes take no time)
    "job": "CASE WHEN kind = 'cloze' AND status IN ('success', 'failure')"
           " THEN completed_at - created_at END",
    "tts": "tts_seconds",  # speaking the card's batch
    "sync": "sync_seconds",  # the sync that carried its note
}
PURGED = "timings_purged"  # the ankisync_state key of the purged jobs' totals


def measure(conn, where="1", args=()):
    """{name: {"buckets": [cumulative count per bound], "count", "sum"}} of the jobs
    matching where: one pass over the table, each value put in its bucket here (a
    query with a sum per bound is several times slower in SQLite)."""
    found = {name: {"buckets": [0] * (len(BUCKETS) + 1), "count": 0, "sum": 0}
             for name in HISTOGRAMS}
    figures = list(found.values())
    for row in conn.execute(f"SELECT {', '.join(HISTOGRAMS.values())} FROM ankisync_jobs"
                            f" WHERE {where}", args):
        for value, figure in zip(row, figures):
            if value is not None:
                figure["buckets"][bisect.bisect_left(BUCKETS, value)] += 1
                figure["count"] += 1
                figure["sum"] += value
    for figure in figures:  # per bucket -> at most each bound, as Prometheus counts
        figure["buckets"] = list(itertools.accumulate(figure["buckets"]))[:len(BUCKETS)]
    return found


def add(one, other):
    return {name: {"buckets": [a + b for a, b in zip(one[name]["buckets"],
                                                      other[name]["buckets"])],
                   "count": one[name]["count"] + other[name]["count"],
                   "sum": one[name]["sum"] + other[name]["sum"]} for name in HISTOGRAMS}


def purged(conn):
    """The totals of the jobs purged so far (zeros at first)."""
    row = conn.execute("SELECT value FROM ankisync_state WHERE key = ?", (PURGED,)).fetchone()
    zero = {name: {"buckets": [0] * len(BUCKETS), "count": 0, "sum": 0} for name in HISTOGRAMS}
    kept = json.loads(row[0]) if row else {}
    if any(len(kept.get(name, {}).get("buckets", ())) != len(BUCKETS) for name in HISTOGRAMS):
        return zero  # none yet, or made with other bounds: start again
    return kept


def fold(conn, where, args, names=tuple(HISTOGRAMS)):
    """Add the jobs matching where to the purged totals, in the caller's transaction (the
    purge's; a retry's, for the "job" figure only, before the job's end is cleared)."""
    measured = measure(conn, where, args)
    for name in HISTOGRAMS.keys() - set(names):
        measured[name] = {"buckets": [0] * len(BUCKETS), "count": 0, "sum": 0}
    totals = add(purged(conn), measured)
    conn.execute("INSERT OR REPLACE INTO ankisync_state VALUES (?, ?)",
                 (PURGED, json.dumps(totals)))


def totals(path):
    """Every job's timings: those in the table and those purged, read in one snapshot."""
    conn = db.connect(path)
    conn.execute("BEGIN")
    try:
        return add(measure(conn), purged(conn))
    finally:
        conn.execute("COMMIT")
        # The scan filled this thread's page cache (2 MB), and waitress has 16 threads,
        # each with its own connection: let the pages go rather than keep 32 MB.
        conn.execute("PRAGMA shrink_memory")
