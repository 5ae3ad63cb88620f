"""Counters that every tmail process adds to and the API exposes to Prometheus.

tmail's processes come and go: gunicorn recycles workers, the receiver restarts, and a cron
runner lives for one pass. prometheus_client's multiprocess mode keeps one file per process
id, which grows without end under cron, so counters are kept in ``<data>/metrics.db`` instead:
each process adds its increments in memory and merges them into SQLite at most once a second
(and at exit), a single small transaction whatever the traffic. A crash loses at most that
last second of counts, never a message.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tmail import sqlite as tmail_sqlite

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0


@dataclass(frozen=True)
class CounterSpec:
    name: str  # without Prometheus' "_total" suffix, which the exposition adds
    help: str
    labels: tuple[str, ...]


SMTP_MESSAGES = CounterSpec(
    "tmail_smtp_messages",
    "Messages the SMTP receiver accepted (result=accepted) or refused, by reason class.",
    ("result", "reason"),
)
DELIVERIES = CounterSpec(
    "tmail_deliveries",
    "Delivery attempts per record: sent, deferred or bounced, by transport.",
    ("result", "transport"),
)
DSNS = CounterSpec(
    "tmail_dsns",
    "Delivery status notifications queued for senders, by action (failed, delayed).",
    ("action",),
)
API_REQUESTS = CounterSpec(
    "tmail_api_requests",
    "Admin API requests by route, method and HTTP status.",
    ("route", "method", "status"),
)
COUNTERS = (SMTP_MESSAGES, DELIVERIES, DSNS, API_REQUESTS)
_BY_NAME = {spec.name: spec for spec in COUNTERS}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (name, labels)
)
"""


class Counters:
    """Process-safe counters in ``path`` (SQLite); cheap to call from any thread."""

    def __init__(self, path: Path, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        # (name, label values) -> increment; label values are serialized only at flush
        self._pending: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self._pid = -1  # the flusher thread belongs to one process; a fork starts another
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.execute(_SCHEMA)
        atexit.register(self.flush)

    def inc(self, spec: CounterSpec, amount: float = 1.0, **labels: str) -> None:
        if set(labels) != set(spec.labels):
            raise ValueError(f"{spec.name} takes labels {spec.labels}, got {sorted(labels)}")
        key = (spec.name, tuple(labels[name] for name in spec.labels))
        with self._lock:
            if self._pid != os.getpid():
                self._start_flusher()
            self._pending[key] += amount

    def flush(self) -> None:
        """Merge this process's pending increments into the file (one transaction)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not add its parent's counts
                self._pending.clear()
                return
            pending, self._pending = self._pending, Counter()
        if not pending:
            return
        try:
            with self._connection() as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
                    [(name, json.dumps(list(values)), amount)
                     for (name, values), amount in pending.items()],
                )
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("metrics not saved (%s); keeping them for the next flush", exc)
            with self._lock:
                self._pending.update(pending)

    def read(self) -> Iterator[tuple[CounterSpec, list[str], float]]:
        """Every counter of every process, pending increments of this one included: the spec,
        the label values (in the spec's order) and the value."""
        self.flush()
        with self._connection() as conn:
            rows = conn.execute("SELECT name, labels, value FROM counters ORDER BY name, labels")
            for name, labels, value in rows.fetchall():
                spec = _BY_NAME.get(name)
                if spec is not None:
                    yield spec, json.loads(labels), value

    def _start_flusher(self) -> None:
        self._pid = os.getpid()
        self._pending.clear()  # counts copied from a parent by fork are the parent's
        threading.Thread(target=self._flush_loop, name="metrics-flush", daemon=True).start()

    def _flush_loop(self) -> None:
        pid = self._pid
        while pid == os.getpid():
            time.sleep(self.flush_interval)
            self.flush()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # Counters are not mail: NORMAL (no fsync per merge) is durable enough.
        conn = tmail_sqlite.connect(self.path, synchronous="NORMAL")
        try:
            yield conn
        finally:
            conn.close()
