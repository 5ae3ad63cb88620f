"""``GET /metrics``: Prometheus' text format, for the queue and for every process's counters.

Queue figures come from one pass over the queue (as the summary does), kept for
``QUEUE_FIGURES_TTL`` seconds per worker: a scraper every second (or several scrapers) must
not make every worker walk a queue of 100,000 records each time, and a gauge a few seconds
old is what Prometheus expects anyway. The counters are those every process keeps in the data
dir (:mod:`tmail.metrics`), read at each scrape. Credentials are those of the API unless
``TMAIL_METRICS_PUBLIC`` is true (a scraper on a private network).

Every metric carries a ``node`` label (``TMAIL_NODE``): the queue and the counters are those
of this node's data dir, and with several nodes behind one MX the sums per node and the
total are then one query away, whatever each scraper's ``instance`` label says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.auth import auth
from app.services import Services, services
from tmail.metrics import API_REQUESTS, COUNTERS, Counters
from tmail.queue import QueueStore, Status
from tmail.queue.summary import Summary, summarize

bp = Blueprint("metrics", __name__)
TOP_DOMAINS = 20
QUEUE_FIGURES_TTL = 5.0


class QueueFigures:
    """The queue's summary, computed again at most every ``ttl`` seconds; concurrent
    scrapes of a stale one wait for a single pass instead of each making their own."""

    def __init__(self, queue: QueueStore, ttl: float = QUEUE_FIGURES_TTL) -> None:
        self.queue, self.ttl = queue, ttl
        self._lock = threading.Lock()
        self._summary: Summary | None = None
        self._at = 0.0

    def get(self) -> Summary:
        with self._lock:
            if self._summary is None or time.monotonic() - self._at >= self.ttl:
                self._summary = summarize(self.queue)
                self._at = time.monotonic()
            return self._summary


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions["tmail_queue_figures"] = QueueFigures(
        state.app.extensions["tmail"].queue)


class TmailCollector(Collector):
    """Builds every metric at each scrape, from the cached queue figures and the counters."""

    def __init__(self, tmail: Services, figures: QueueFigures) -> None:
        self.tmail, self.figures = tmail, figures

    def collect(self) -> Iterator[Metric]:
        summary = self.figures.get()
        node = self.tmail.config.node
        records = GaugeMetricFamily("tmail_queue_records", "Queue records by status.",
                                    labels=["node", "status"])
        for status in Status:
            records.add_metric([node, status.name.lower()], summary.by_status[int(status)])
        yield records
        domains = GaugeMetricFamily(
            "tmail_queue_records_by_domain",
            f"Queue records by destination domain (the {TOP_DOMAINS} biggest domains).",
            labels=["node", "domain"],
        )
        for host, counts in summary.domains(TOP_DOMAINS):
            domains.add_metric([node, host], sum(counts))
        yield domains
        oldest = GaugeMetricFamily("tmail_queue_oldest_age_seconds",
                                   "Age of the oldest queue record (0 when the queue is empty).",
                                   labels=["node"])
        oldest.add_metric([node], summary.oldest_age)
        yield oldest
        yield from _counter_families(self.tmail.counters, node)


def _counter_families(counters: Counters, node: str) -> Iterator[Metric]:
    families = {spec.name: CounterMetricFamily(spec.name, spec.help,
                                               labels=["node", *spec.labels])
                for spec in COUNTERS}
    for spec, label_values, value in counters.read():
        families[spec.name].add_metric([node, *label_values], value)
    yield from families.values()


def _exposition() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TmailCollector(services(), current_app.extensions["tmail_queue_figures"]))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/metrics")
def metrics() -> Response:
    if services().config.metrics_public:
        return _exposition()
    return auth.login_required(_exposition)()


def count_request(response: Response) -> Response:
    """``after_request`` hook: one count per request, by route template (never the raw path,
    which would make a label value per user or per queue id)."""
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    services().counters.inc(API_REQUESTS, route=rule, method=request.method,
                            status=str(response.status_code))
    return response
