"""Prometheus metrics for GET /metrics (ANKISYNC_METRICS=on), read at each scrape.

Nothing here counts in a process: every figure is read from the data dir when
Prometheus asks (the job table, the state the worker records, its pid file), so
the web process and the worker are both counted, and a restart loses nothing.
Imported by the web process only when metrics are on (prometheus_client costs it
a few MB).
"""

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily

import config
import db
import health
import jobs
import timings

# The classic text format, which every Prometheus (2.x too) reads; our names need no more
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
HELP = {
    "job": "Seconds from a card's acceptance to its end (success or failure)",
    "tts": "Seconds speaking a card took (its batch's text-to-speech)",
    "sync": "Seconds the sync that carried a card's note took",
}


class JobTable:
    """A prometheus_client collector over one data dir."""

    def __init__(self, settings):
        self.settings = settings

    def collect(self):
        path = config.db_path(self.settings)
        counts = dict(db.connect(path).execute(
            "SELECT status, count(*) FROM ankisync_jobs GROUP BY status").fetchall())
        by_status = GaugeMetricFamily("ankisync_jobs", "Jobs in the job table, by status"
                                      " (finished ones stay ANKISYNC_RESULT_TTL)",
                                      labels=["status"])
        for status in jobs.STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("ankisync_queue_depth", "Jobs waiting or running (pending,"
                                " started, retrying)", sum(counts.get(s, 0) for s in jobs.UNFINISHED))
        yield GaugeMetricFamily("ankisync_worker_up", "1 when the worker process is running",
                                1 if health.worker_pid(self.settings) else 0)
        last_sync = db.get_state(path, "last_sync_at")
        if last_sync:  # never synced: absent, as Prometheus prefers to zero
            yield GaugeMetricFamily("ankisync_last_sync_success_timestamp_seconds",
                                    "When the last successful sync ended (Unix time)",
                                    float(last_sync))
        for name, figures in timings.totals(path).items():
            family = HistogramMetricFamily(f"ankisync_{name}_duration_seconds", HELP[name])
            buckets = [(str(bound), count) for bound, count
                       in zip(timings.BUCKETS, figures["buckets"])]
            family.add_metric([], buckets + [("+Inf", figures["count"])],
                              sum_value=figures["sum"])
            yield family


def render(settings):
    """The metrics in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobTable(settings))
    return generate_latest(registry)
