"""Counters that every tmail process adds to and the API exposes to Prometheus.

tmail's processes come and go: gunicorn recycles workers, the receiver restarts, and a cron
runner lives for one pass. prometheus_client's multiprocess mode keeps one file per process
id, which grows without end under cron, so counters are kept in ``<data>/metrics.db`` instead:
each process adds its increments in memory and merges them into SQLite at most once a second
(and at exit), a single small transaction whatever the traffic. A crash loses at most that
last second of counts, never a message.

A few counters are also kept per minute (``CounterSpec.per_minute`` names the labels kept,
fewer than the counter's, so that the series stay small), for the web console's delivery
chart: a second table of the same file, written in the same flush transaction, each
increment in the minute it happened (not the minute of the flush), and pruned to
``PER_MINUTE_RETENTION`` minutes (Prometheus is the place for a longer history).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tmail import sqlite as tmail_sqlite

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
PER_MINUTE_RETENTION = 48 * 60  # minutes of per-minute series kept (the chart shows <= 24 h)
PRUNE_INTERVAL = 300.0  # seconds between two prunings by one process


@dataclass(frozen=True)
class CounterSpec:
    name: str  # without Prometheus' "_total" suffix, which the exposition adds
    help: str
    labels: tuple[str, ...]
    per_minute: tuple[str, ...] | None = None  # labels of the per-minute series; None: none


SMTP_MESSAGES = CounterSpec(
    "tmail_smtp_messages",
    "Messages the SMTP receiver accepted (result=accepted) or refused, by reason class.",
    ("result", "reason"),
)
DELIVERIES = CounterSpec(
    "tmail_deliveries",
    "Delivery attempts per record: sent, deferred or bounced, by transport.",
    ("result", "transport"),
    per_minute=("result",),  # the console's chart: sent, deferred, bounced per minute
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
);
-- minute first: pruning and reading are ranges of minutes.
CREATE TABLE IF NOT EXISTS per_minute (
    minute INTEGER NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (minute, name, labels)
) WITHOUT ROWID;
"""
_MERGE_COUNTERS = ("INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)"
                   " ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value")
_MERGE_MINUTES = ("INSERT INTO per_minute (minute, name, labels, value) VALUES (?, ?, ?, ?)"
                  " ON CONFLICT (minute, name, labels)"
                  " DO UPDATE SET value = value + excluded.value")

Key = tuple[str, tuple[str, ...]]  # (counter name, label values)
MinuteKey = tuple[str, tuple[str, ...], int]  # (counter name, per-minute label values, minute)


@dataclass
class _Pending:
    """Increments not yet merged into the file."""

    counters: Counter[Key] = field(default_factory=Counter)
    minutes: Counter[MinuteKey] = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(self.counters or self.minutes)

    def update(self, other: _Pending) -> None:
        self.counters.update(other.counters)
        self.minutes.update(other.minutes)


class Counters:
    """Process-safe counters in ``path`` (SQLite); cheap to call from any thread.

    ``clock`` (``time.time``) dates the increments for the per-minute series.
    """

    def __init__(self, path: Path, flush_interval: float = FLUSH_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.clock = clock
        self._lock = threading.Lock()
        # label values are serialized only at flush
        self._pending = _Pending()
        self._pid = -1  # the flusher thread belongs to one process; a fork starts another
        self._pruned_at = float("-inf")
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.executescript(_SCHEMA)
        atexit.register(self.flush)

    def inc(self, spec: CounterSpec, amount: float = 1.0, **labels: str) -> None:
        if set(labels) != set(spec.labels):
            raise ValueError(f"{spec.name} takes labels {spec.labels}, got {sorted(labels)}")
        key = (spec.name, tuple(labels[name] for name in spec.labels))
        minute_key = None
        if spec.per_minute is not None:
            minute_key = (spec.name, tuple(labels[name] for name in spec.per_minute),
                          int(self.clock() // 60))
        with self._lock:
            if self._pid != os.getpid():
                self._start_flusher()
            self._pending.counters[key] += amount
            if minute_key is not None:
                self._pending.minutes[minute_key] += amount

    def flush(self) -> None:
        """Merge this process's pending increments into the file (one transaction), and
        prune the old minutes now and then."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not add its parent's counts
                self._pending = _Pending()
                return
            pending, self._pending = self._pending, _Pending()
        if not pending:
            return
        try:
            with self._connection() as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_MERGE_COUNTERS, [
                    (name, json.dumps(list(values)), amount)
                    for (name, values), amount in pending.counters.items()])
                conn.executemany(_MERGE_MINUTES, [
                    (minute, name, json.dumps(list(values)), amount)
                    for (name, values, minute), amount in pending.minutes.items()])
                pruned = self._prune(conn)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if not self.path.parent.is_dir():  # the data dir is gone: nowhere to keep them
                log.debug("metrics dropped: %s was removed", self.path.parent)
                return
            log.warning("metrics not saved (%s); keeping them for the next flush", exc)
            with self._lock:
                self._pending.update(pending)
            return
        if pruned:
            self._pruned_at = self.clock()

    def _prune(self, conn: sqlite3.Connection) -> bool:
        """Minutes older than the retention go, at most every PRUNE_INTERVAL seconds per
        process (a range of the primary key: cheap; a cron runner prunes at its one flush)."""
        at = self.clock()
        if at - self._pruned_at < PRUNE_INTERVAL:
            return False
        conn.execute("DELETE FROM per_minute WHERE minute < ?",
                     (int(at // 60) - PER_MINUTE_RETENTION,))
        return True

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

    def per_minute(self, spec: CounterSpec,
                   since_minute: int) -> dict[tuple[str, ...], dict[int, float]]:
        """``spec``'s per-minute series of every process from ``since_minute`` (unix time //
        60) on, pending increments of this one included: {label values (in the order of
        ``spec.per_minute``): {minute: increments in that minute}}."""
        if spec.per_minute is None:
            raise ValueError(f"{spec.name} has no per-minute series")
        self.flush()
        series: dict[str, dict[int, float]] = {}  # by labels as stored: decoded once each
        with self._connection() as conn:
            rows = conn.execute("SELECT labels, minute, value FROM per_minute"
                                " WHERE minute >= ? AND name = ? ORDER BY minute",
                                (since_minute, spec.name))
            for labels, minute, value in rows.fetchall():
                minutes = series.get(labels)
                if minutes is None:
                    minutes = series[labels] = {}
                minutes[minute] = value
        return {tuple(json.loads(labels)): minutes for labels, minutes in series.items()}

    def _start_flusher(self) -> None:
        self._pid = os.getpid()
        self._pending = _Pending()  # counts copied from a parent by fork are the parent's
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
