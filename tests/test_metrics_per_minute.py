"""Counters kept per minute (the console's delivery chart) in ``metrics.db``, next to the
cumulative ones: real SQLite files, real processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tmail.metrics import (
    API_REQUESTS,
    DELIVERIES,
    PER_MINUTE_RETENTION,
    Counters,
)

# A minute boundary, so that "the minute of" a time is obvious in the assertions.
T0 = 29_000_000 * 60.0
M0 = int(T0 // 60)

CHILD = """
import sys
from pathlib import Path
from tmail.metrics import DELIVERIES, Counters

path, at, results = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
counters = Counters(path, flush_interval=3600, clock=lambda: at)
for result in results:
    counters.inc(DELIVERIES, result=result, transport="smtp")
# no flush: the process's exit saves what it counted
"""


class Clock:
    """A clock the test moves (Counters takes its clock as a parameter)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def cumulative(path: Path) -> dict[tuple[str, str], float]:
    return {(spec.name, "/".join(labels)): value for spec, labels, value in Counters(path).read()}


def test_increments_land_in_the_minute_they_happened_not_the_minute_of_the_flush(
        tmp_path: Path) -> None:
    clock = Clock(T0 + 5)
    counters = Counters(tmp_path / "metrics.db", flush_interval=3600, clock=clock)
    counters.inc(DELIVERIES, result="sent", transport="smtp")
    clock.at = T0 + 59.9
    counters.inc(DELIVERIES, result="sent", transport="local")
    clock.at = T0 + 3 * 60
    counters.inc(DELIVERIES, result="bounced", transport="smtp")
    clock.at = T0 + 10 * 60  # the flush comes much later
    counters.flush()
    assert counters.per_minute(DELIVERIES, M0) == {
        ("sent",): {M0: 2.0},  # by result only: the transport is not kept per minute
        ("bounced",): {M0 + 3: 1.0},
    }
    assert counters.per_minute(DELIVERIES, M0 + 1) == {("bounced",): {M0 + 3: 1.0}}


def test_increments_of_two_processes_add_up_in_their_minutes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    Counters(path)  # the file exists before the children race to it
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(at), *results], cwd=REPO)
        for at, results in ((T0 + 1, ["sent", "sent", "deferred"]),
                            (T0 + 30, ["sent", "bounced"]),
                            (T0 + 61, ["deferred"]))
    ]
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]
    reader = Counters(path, clock=Clock(T0 + 120))
    assert reader.per_minute(DELIVERIES, M0) == {
        ("sent",): {M0: 3.0},
        ("deferred",): {M0: 1.0, M0 + 1: 1.0},
        ("bounced",): {M0: 1.0},
    }
    # The cumulative counters, and so the Prometheus exposition, are what they always were.
    assert cumulative(path) == {
        ("tmail_deliveries", "sent/smtp"): 3.0,
        ("tmail_deliveries", "deferred/smtp"): 2.0,
        ("tmail_deliveries", "bounced/smtp"): 1.0,
    }


def test_pending_increments_of_the_reading_process_are_included(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "metrics.db", flush_interval=3600, clock=Clock(T0))
    counters.inc(DELIVERIES, 4, result="sent", transport="smtp")
    assert counters.per_minute(DELIVERIES, M0) == {("sent",): {M0: 4.0}}


def test_minutes_older_than_the_retention_are_pruned_by_a_later_flush(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    old = Counters(path, clock=Clock(T0))
    old.inc(DELIVERIES, result="sent", transport="smtp")
    old.flush()
    kept_at = T0 + (PER_MINUTE_RETENTION - 10) * 60
    recent = Counters(path, clock=Clock(kept_at))
    recent.inc(DELIVERIES, result="sent", transport="smtp")
    recent.flush()
    assert Counters(path).per_minute(DELIVERIES, 0) == {
        ("sent",): {M0: 1.0, M0 + PER_MINUTE_RETENTION - 10: 1.0}}

    later = Counters(path, clock=Clock(T0 + (PER_MINUTE_RETENTION + 1) * 60))
    later.inc(DELIVERIES, result="deferred", transport="smtp")
    later.flush()
    with sqlite3.connect(path) as conn:
        minutes = sorted(row[0] for row in conn.execute("SELECT minute FROM per_minute"))
    assert minutes == [M0 + PER_MINUTE_RETENTION - 10, M0 + PER_MINUTE_RETENTION + 1]
    # Pruning the series never touches the cumulative counters.
    assert cumulative(path) == {("tmail_deliveries", "sent/smtp"): 2.0,
                                ("tmail_deliveries", "deferred/smtp"): 1.0}


def test_counters_without_a_per_minute_series_keep_none(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "metrics.db", clock=Clock(T0))
    counters.inc(API_REQUESTS, route="/ping", method="GET", status="200")
    counters.flush()
    with pytest.raises(ValueError, match="no per-minute series"):
        counters.per_minute(API_REQUESTS, 0)
    with sqlite3.connect(tmp_path / "metrics.db") as conn:
        assert conn.execute("SELECT count(*) FROM per_minute").fetchone() == (0,)


def test_a_metrics_file_of_an_older_version_gains_the_per_minute_table(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE counters (name TEXT NOT NULL, labels TEXT NOT NULL, "
                     "value REAL NOT NULL, PRIMARY KEY (name, labels))")
        conn.execute("""INSERT INTO counters VALUES ('tmail_deliveries', '["sent", "smtp"]', 7)""")
    counters = Counters(path, clock=Clock(T0))
    counters.inc(DELIVERIES, result="sent", transport="smtp")
    assert counters.per_minute(DELIVERIES, M0) == {("sent",): {M0: 1.0}}
    assert cumulative(path) == {("tmail_deliveries", "sent/smtp"): 8.0}
