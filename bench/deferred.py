"""A big deferred queue: the pickup latency of new mail and the daemon's CPU while nothing is due.

    .venv/bin/python -m bench.deferred [--records 100000] [--idle 60] [--pickups 50]

A public MX keeps a deferred queue (mail for hosts that are down) far bigger than what is due
at any moment; the daemon runner must stay cheap while it waits, and new mail must not wait
behind the old. Steps:

1. ``--records`` records, one recipient per message (the MX case: one message to one dead
   host), are enqueued through the store's own ``enqueue_many`` and then deferred through its
   ``locked().write`` as the runner defers them: ``DeliveryFailedCount`` 3, a 4xx
   ``LastError`` and a ``NextDeliveryScheduledAt`` spread over one to two hours from now, so
   that nothing falls due while we measure. fsync is off for the filling only (durability is
   not what this measures), and one ``sync`` at the end keeps the kernel's write-back of the
   filling out of the figures.
2. ``python -m queue_runner`` (its default worker processes) starts on that queue, every
   domain routed to a loopback smtp-sink, and one new message is enqueued at once: the time
   until the sink has it is the "first delivery after start" (the start-up sweep first).
   Then we wait for the daemon and its workers to use less than 5 % of a core over a
   second, at most as long again (a daemon that never goes idle is reported as such).
3. ``--pickups`` new messages, one at a time with a random 50-150 ms pause between them, are
   enqueued through the store (fsync on, as the receiver does): the time from the return of
   ``enqueue`` to the sink having the message, polled every 0.5 ms.
4. The CPU time (utime + stime from ``/proc/<pid>/stat``) of the daemon and all its workers
   over ``--idle`` seconds with no traffic, as per cent of one core. The window starts a
   start-up sweep's length after that sweep ended, so that the first periodic sweep
   (TMAIL_RUNNER_SWEEP_INTERVAL, 60 s by default, after the start-up one) lies inside a
   60 s window whole.

Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from bench.smtp_tools import SmtpSink
from bench.tmail_procs import tmail
from tmail import fsutil
from tmail.queue import Envelope, QueueStore, Status
from tmail.queue.record import now

# 4 KiB with 76-character lines, as in bench/enqueue.py.
BODY = b"Subject: deferred\r\n\r\n" + (b"x" * 76 + b"\r\n") * 52 + b"x" * 18
DEAD_HOSTS = 50
PICKUP_RCPT = "new@pickup.test"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET = 0.05  # share of one core below which the daemon counts as idle


def fill_deferred(queue: Path, records: int, *, batch: int = 250,
                  processes: int = 4, hosts: int = DEAD_HOSTS) -> float:
    """``records`` deferred records in the queue at ``queue``, to ``hosts`` domains in
    turn (``d0.example``...); returns the seconds it took.

    The store's Python code is the cost (about a millisecond per record enqueued and
    deferred), so batches go through it in several processes at once, each with its own
    store (ids are allocated across processes by the store's counter file).
    """
    started = time.perf_counter()
    QueueStore(queue)  # the tree, once, before the workers race to create it
    moment = now()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_fill_worker,
                             initargs=(queue,)) as pool:
        for future in [pool.submit(_fill_batch, moment, start, min(records, start + batch),
                                   hosts) for start in range(0, records, batch)]:
            future.result()
    os.sync()  # the kernel's write-back of the filling stays out of the figures
    return time.perf_counter() - started


_fill_store: QueueStore | None = None


def _fill_worker(queue: Path) -> None:
    """A filling process: fsync off (durability is not what is measured), one store.

    Off means the store's fsync rounds too, not only ``os.fsync``: each round hands its
    files to a thread pool, and on a loaded machine those hand-offs made the filling five
    times slower (12.7 s against 2.4 s for 1,500 records at load average 11).
    """
    global _fill_store
    os.fsync = lambda fd: None
    fsutil.fsync_each = lambda paths, directories=False: {}
    _fill_store = QueueStore(queue, id_block=1000)


def _fill_batch(moment: datetime, start: int, end: int, hosts: int = DEAD_HOSTS) -> None:
    """Records ``start`` to ``end``: enqueued, then deferred as the runner defers them.

    The deferred record is written over the enqueued one in place, where the runner writes a
    new file and renames it over: nobody reads this queue yet, and on this machine's ext4 (no
    journal) every inode freed by a rename slows each later file creation for minutes (the
    allocator skips recently deleted inodes one by one), which made the filling quadratic.
    """
    store, rng = _fill_store, random.Random(start)
    assert store is not None
    layout = store.layout
    envelopes = [Envelope(BODY, "sender@bench.test", [f"r{n}@d{n % hosts}.example"])
                 for n in range(start, end)]
    for records in store.enqueue_many(envelopes):
        assert not isinstance(records, Exception), records
        for record in records:
            deferred = record.evolve(
                status=Status.SCHEDULED, delivery_failed_count=3,
                last_error="451 4.4.1 connect to d.example[192.0.2.1]:25: refused",
                last_attempt_at=moment,
                next_delivery_at=moment + timedelta(seconds=rng.uniform(3600, 7200)))
            with open(layout.record_json(record.id), "wb") as out:
                out.write(deferred.to_bytes())


# --- CPU of a process tree, from /proc ---------------------------------------------------

def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (the daemon's supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat_fields(int(entry))
            if stat:
                children.setdefault(int(stat[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] state, [1] ppid, [11] utime,
    [12] stime (proc(5) numbers them 3, 4, 14, 15); empty once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_share(root: int, seconds: float) -> float:
    """Per cent of one core that ``root`` and its descendants used over ``seconds``.

    The tree is read at both ends; a process present at only one end (a worker restarted)
    counts from zero, which can only overstate the figure.
    """
    before, started = cpu_ticks(process_tree(root)), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_ticks(process_tree(root)), time.monotonic() - started
    used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
    return 100.0 * used / CLOCK_TICKS / elapsed


def wait_quiet(root: int, timeout: float) -> bool:
    """Wait until ``root``'s tree uses less than QUIET of a core over a second; False if it
    has not within ``timeout`` seconds (a daemon that never goes idle is a finding, not a
    reason to hang the benchmark)."""
    deadline = time.monotonic() + timeout
    while cpu_share(root, 1.0) >= QUIET * 100:
        if time.monotonic() > deadline:
            return False
    return True


# --- pickup of new mail --------------------------------------------------------------------

def pickup(store: QueueStore, sink: SmtpSink, already: int, timeout: float = 30.0) -> float:
    """Enqueue one new message; ms from the return of ``enqueue`` to the sink having it."""
    store.enqueue(BODY, "sender@bench.test", [PICKUP_RCPT])
    accepted = time.perf_counter()
    while sink.received() <= already:
        if time.perf_counter() - accepted > timeout:
            raise TimeoutError(f"no pickup within {timeout:.0f} s")
        time.sleep(0.0005)
    return (time.perf_counter() - accepted) * 1000


def measure(base: Path, records: int, idle: float, pickup_count: int) -> dict[str, float]:
    """Steps 1-4 of the module docstring under ``base``; the figures by name."""
    figures = {"records": float(records), "idle seconds": idle}
    queue = base / "var" / "queue"
    figures["fill"] = fill_deferred(queue, records)
    store = QueueStore(queue)
    with SmtpSink() as sink, tmail(base, receiver=False, runner=True,
                                   route_port=sink.port) as server:
        started = time.monotonic()
        daemon = server.pid("queue_runner")
        # Queued at start-up: the daemon delivers it once its start-up sweep is done.
        pickup(store, sink, 0, timeout=600)
        figures["first delivery"] = startup = time.monotonic() - started
        server.check_running()
        figures["quiet"] = float(wait_quiet(daemon, max(10.0, startup)))
        rng, latencies = random.Random(2), []
        for n in range(pickup_count):
            latencies.append(pickup(store, sink, n + 1))
            time.sleep(rng.uniform(0.05, 0.15))  # an MX's mail arrives unevenly
        latencies.sort()
        figures["pickup median"] = statistics.median(latencies)
        figures["pickup p99"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        # The window starts one start-up sweep's length after that sweep ended, so that the
        # first periodic sweep (60 s after it) lies inside a 60 s window whole.
        time.sleep(max(0.0, started + 2 * startup + 2.0 - time.monotonic()))
        figures["idle cpu"] = cpu_share(daemon, idle)
        figures["workers"] = float(len(process_tree(daemon)) - 1)
        server.check_running()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the CPU window")
    parser.add_argument("--pickups", type=int, default=50)
    parser.add_argument("--dir", default="/var/tmp", help="where the queue goes (the disk)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tmail-deferred-", dir=args.dir))
    try:
        figures = measure(base, args.records, args.idle, args.pickups)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.records:,} deferred records (filled in {figures['fill']:.0f} s); "
          f"first delivery {figures['first delivery']:.1f} s after start; pickup of new mail (ms, "
          f"{args.pickups} messages): median {figures['pickup median']:.1f}, p99 "
          f"{figures['pickup p99']:.1f}; idle daemon ({figures['workers']:.0f} workers) over "
          f"{args.idle:.0f} s: {figures['idle cpu']:.1f} % of one core"
          f"{'' if figures['quiet'] else ' (it never went idle after its start-up sweep)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
