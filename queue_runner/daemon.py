"""The daemon driver: deliver new mail within milliseconds, retries on time, no busy polling.

The daemon watches the queue's notify file (:mod:`tmail.queue.notify`) for hints of new,
released and retried records, keeps the due times of its share of the queue in a
:class:`~queue_runner.schedule.Schedule` and sleeps until the earliest one, so it reads only
the records that fall due. A sweep at start-up and every TMAIL_RUNNER_SWEEP_INTERVAL
seconds finds whatever no hint announced (mail queued while the daemon was down, changes
made by another runner or by a tool that sent no hint); after the first one it reads only
what may have changed (:class:`Sweeper`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from queue_runner.delivery import Runner
from tmail.queue import Record, Status
from tmail.queue.notify import NotifyReader, old_path
from tmail.queue.scan import LeafMemo

log = logging.getLogger("queue_runner")

# Wake at least this often: cached SMTP sessions may need closing, and a rotated notify
# file is still read for a few seconds (a writer may have opened it just before).
_TICK = 1.0

# However unchanged the directories look, a sweep reads the whole queue this often (seconds):
# it bounds how long an edit the directories cannot show (a record edited in place, not
# renamed over) goes unseen, for a tenth of a per cent of a core at 100,000 records.
FULL_SWEEP_EVERY = 3600.0


# What a writer does to the notify file. Opening, reading and closing it unwritten are what
# the workers themselves do: waking on those, each read would wake every worker again.
_NEWS = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED})


class _Wake(FileSystemEventHandler):
    def __init__(self, names: tuple[str, ...], event: threading.Event) -> None:
        self._suffixes = tuple(os.sep + name for name in names)
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _NEWS:
            return
        paths = (str(event.src_path), str(getattr(event, "dest_path", "") or ""))
        if any(path.endswith(self._suffixes) for path in paths):
            self._event.set()


class Sweeper:
    """A worker's sweeps, reading only the leaf directories of ``records/`` that changed.

    A record is only ever changed through its directory (``rename``, ``unlink``), so a leaf
    whose stamp is the one of the last sweep (:class:`~tmail.queue.scan.LeafMemo`) holds the
    same records, unchanged: those of the other workers' share, the held ones (a release
    rewrites them) and this worker's scheduled ones, which the schedule already holds. That
    leaves this worker's records of an unchanged leaf that the schedule no longer holds: an
    attempt took them but could not claim them (another runner had them, and may have died
    without writing anything). Those are read again, so the sweep stays the safety net that
    reading everything was, at the cost of a ``stat`` per leaf: with 100,000 deferred
    records, a sweep reads nothing instead of every file.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.memo = LeafMemo()
        self._waiting: dict[Path, list[int]] = {}  # leaf -> this share's unheld ids in it
        self._full_at = -FULL_SWEEP_EVERY

    def sweep(self) -> None:
        runner = self.runner
        if time.monotonic() - self._full_at >= FULL_SWEEP_EVERY:
            self.memo, self._waiting, self._full_at = LeafMemo(), {}, time.monotonic()
        memo = self.memo
        memo.begin()
        fresh: dict[Path, list[int]] = defaultdict(list)
        listing = runner.store.iter_raw_records(memo=memo)
        runner.take(self._noted(runner.owned(listing), fresh))
        memo.end()
        for leaf in memo.read:
            self._waiting[leaf] = fresh.get(leaf, [])
        for leaf in [leaf for leaf in self._waiting if leaf not in memo.present]:
            del self._waiting[leaf]
        runner.submit_ids([record_id for leaf, ids in self._waiting.items()
                           if leaf not in memo.read for record_id in ids
                           if record_id not in runner.schedule])

    def _noted(self, records: Iterable[Record],
               fresh: dict[Path, list[int]]) -> Iterator[Record]:
        layout = self.runner.store.layout
        for record in records:
            if record.status != Status.HELD:
                fresh[layout.record_dir(record.id)].append(record.id)
            yield record


class Daemon:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.config = runner.config
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.signalled = False
        self.notify = NotifyReader(runner.store.layout.notify)
        self.sweeper = Sweeper(runner)

    def stop(self) -> None:
        """Stop from another thread."""
        self.stopping.set()
        self.wake.set()

    def stop_from_signal(self) -> None:
        """Stop from a signal handler: only a flag, seen within a second by the loop.

        A handler runs in the main thread between two bytecodes, possibly inside
        ``Event.wait`` with the event's lock held: ``Event.set`` there deadlocks (it did).
        """
        self.signalled = True

    def run(self) -> None:
        store = self.runner.store
        housekeeper = self.runner.partition[0] == 0  # one cleaner among the workers
        if housekeeper:
            store.cleanup(self.config.orphan_grace)
        self.notify.skip_to_end()  # before the sweep: nothing queued after it is missed
        observer = Observer()
        path = store.layout.notify
        observer.schedule(_Wake((path.name, old_path(path).name), self.wake),
                          str(store.layout.root), recursive=False)
        observer.start()
        log.info("watching %s", path)
        try:
            self._loop(housekeeper)
        finally:
            observer.stop()
            observer.join()
            self.notify.close()
            self.runner.shutdown()

    def _loop(self, housekeeper: bool) -> None:
        runner = self.runner
        self.sweeper.sweep()
        last_sweep = last_cleanup = time.monotonic()
        while not self.stopping.is_set() and not self.signalled:
            until_sweep = self.config.runner_sweep_interval - (time.monotonic() - last_sweep)
            self.wake.wait(max(0.0, runner.schedule.seconds_until_next(min(until_sweep, _TICK))))
            self.wake.clear()
            if self.stopping.is_set() or self.signalled:
                break
            runner.close_idle()
            runner.take_hints(self.notify.read_new())
            runner.submit_due()
            if time.monotonic() - last_sweep >= self.config.runner_sweep_interval:
                self.sweeper.sweep()
                last_sweep = time.monotonic()
            if housekeeper and (
                time.monotonic() - last_cleanup >= max(60.0, self.config.orphan_grace / 4)
            ):
                runner.store.cleanup(self.config.orphan_grace)
                last_cleanup = time.monotonic()
