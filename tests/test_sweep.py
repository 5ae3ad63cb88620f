"""The daemon runner's periodic sweep: cheap on a big deferred queue, yet a safety net.

Each worker of the daemon used to read every record file of the queue at every sweep (60 s by
default) to find its share: with 100,000 deferred records that alone kept a tenth of a core
busy. The sweep now reads only what may have changed since it last looked, and still finds
what no hint announced: a record changed without a hint, one whose attempt lost its claim to
another runner.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO, child_pids, stop, tmail_env, wait_until
from tests.sink import Sink
from tmail import config as tmail_config
from tmail.queue import Envelope, QueueStore, Status
from tmail.queue.record import now

RECORDS = 200
SWEEP = 1.0  # TMAIL_RUNNER_SWEEP_INTERVAL of these tests: many sweeps in a few seconds


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, sink: Sink) -> dict[str, str]:
    return tmail_env(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_RUNNER_PROCESSES="2",
                     TMAIL_RUNNER_SWEEP_INTERVAL=str(SWEEP))


@pytest.fixture
def store(env: dict[str, str]) -> QueueStore:
    return QueueStore(tmail_config.load(env).queue_dir)


def fill_deferred(store: QueueStore, count: int) -> list[int]:
    """``count`` records deferred an hour or more ahead, as the runner defers them."""
    envelopes = [Envelope(b"Subject: deferred\r\n\r\nbody\r\n", "s@sender.test",
                          [f"r{n}@dead{n % 7}.test"]) for n in range(count)]
    ids = []
    for records in store.enqueue_many(envelopes):
        assert not isinstance(records, Exception)
        for record in records:
            with store.locked(record.id) as locked:
                assert locked is not None
                locked.write(locked.record.evolve(
                    delivery_failed_count=3, last_error="451 4.4.1 refused",
                    next_delivery_at=now() + timedelta(hours=1, seconds=record.id)))
            ids.append(record.id)
    return ids


def read_syscalls(pids: list[int]) -> int:
    """How many read-type system calls these processes made (``syscr`` of /proc/PID/io)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/io") as io:
            fields = dict(line.split(": ") for line in io.read().splitlines())
        total += int(fields["syscr"])
    return total


@pytest.fixture
def daemon(env: dict[str, str], store: QueueStore, tmp_path: Path) -> Iterator[list[int]]:
    """The daemon runner (2 workers) over a queue of RECORDS deferred records, once its
    sweeps have seen the queue settled; yields the workers' pids."""
    fill_deferred(store, RECORDS)
    log = tmp_path / "runner.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "queue_runner"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: log.read_text().count("watching") == 2, 30), log.read_text()
        workers = child_pids(process.pid)
        assert len(workers) == 2
        # A directory changed less than a clock tick before a sweep looked at it may change
        # again unseen within that tick: the sweep trusts what it saw only once the queue's
        # last change is a second old. Wait for two sweeps past that.
        time.sleep(1.0 + 2.5 * SWEEP)
        yield workers
    finally:
        stop(process)


def test_an_idle_daemon_does_not_reread_unchanged_deferred_records(daemon: list[int]) -> None:
    """Several sweeps over an unchanged deferred queue read (next to) nothing: the workers'
    read system calls over them stay far below one read per record."""
    before = read_syscalls(daemon)
    time.sleep(4 * SWEEP)
    reads = read_syscalls(daemon) - before
    assert reads < RECORDS / 2, f"{reads} reads in 4 sweeps of {RECORDS} unchanged records"


def test_the_sweep_finds_a_record_changed_without_a_hint(
    daemon: list[int], store: QueueStore, sink: Sink
) -> None:
    """An edit that appends no hint (a tool writing the record through the store's lock, as
    the CLI and the API do) is still picked up by the next sweep."""
    target = next(store.iter_ids())
    with store.locked(target) as locked:
        assert locked is not None
        locked.write(locked.record.evolve(next_delivery_at=now()))
    assert wait_until(lambda: len(sink.messages) == 1, 10 + 5 * SWEEP)
    assert wait_until(lambda: store.get(target) is None, 10)  # removed after the sink's 250


def test_the_sweep_retries_a_record_whose_attempt_lost_the_claim(
    daemon: list[int], store: QueueStore, sink: Sink
) -> None:
    """A record that fell due while another runner held its claim (that runner then died
    without writing anything) is left unchanged and unscheduled: the sweep must still
    deliver it, although nothing in its directory changed since the sweep last read it."""
    target = next(store.iter_ids())
    with store.claimed(target) as claim:  # "another runner" delivering it
        assert claim is not None
        with store.locked(target) as locked:
            assert locked is not None
            locked.write(locked.record.evolve(next_delivery_at=now()))
        store.wake([target])  # the worker tries at once, and at each sweep: the claim is ours
        time.sleep(1.0 + 2.5 * SWEEP)  # until sweeps trust the directory as unchanged
        assert sink.messages == [] and store.get(target).status == Status.IN_DELIVERY
    assert wait_until(lambda: len(sink.messages) == 1, 10 + 5 * SWEEP)
    assert wait_until(lambda: store.get(target) is None, 10)  # removed after the sink's 250
