"""The daemon driver: deliver new mail within milliseconds, retries on time, no busy polling.

inotify is not recursive and can overflow, so the daemon watches one flat file that every
enqueue appends to (``<queue>/notify``) and treats its lines as hints; a full sweep at
start-up and every TMAIL_RUNNER_SWEEP_INTERVAL seconds finds whatever a hint missed (mail
queued while the daemon was down produces no event at all).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from queue_runner.delivery import Runner
from tmail.queue.record import now

log = logging.getLogger("queue_runner")
_ROTATE_AT = 1024 * 1024


class NotifyReader:
    """Reads the ids appended to the notify file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode = 0
        self._offset = 0

    def skip_to_end(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return
        self._inode, self._offset = info.st_ino, info.st_size

    def read_new(self) -> list[int]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            info = os.fstat(fd)
            if info.st_ino != self._inode or info.st_size < self._offset:
                self._inode, self._offset = info.st_ino, 0  # replaced or truncated
            data = os.pread(fd, info.st_size - self._offset, self._offset)
            complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
            self._offset += len(complete)
            if self._offset >= _ROTATE_AT and self._offset == info.st_size:
                # Appenders use O_APPEND, so their next line lands at the new end; a hint
                # written in between is lost, and the periodic sweep covers it.
                os.ftruncate(fd, 0)
                self._offset = 0
        finally:
            os.close(fd)
        return [int(line) for line in complete.split() if line.isdigit()]


class _Wake(FileSystemEventHandler):
    def __init__(self, name: str, event: threading.Event) -> None:
        self._name = name
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (str(event.src_path), str(getattr(event, "dest_path", "") or ""))
        if any(path.endswith(os.sep + self._name) for path in paths):
            self._event.set()


class Daemon:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.config = runner.config
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.signalled = False
        self.notify = NotifyReader(runner.store.layout.notify)

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
        observer.schedule(_Wake(store.layout.notify.name, self.wake), str(store.layout.root),
                          recursive=False)
        observer.start()
        log.info("watching %s", store.layout.notify)
        try:
            self._loop(housekeeper)
        finally:
            observer.stop()
            observer.join()
            self.runner.shutdown()

    def _loop(self, housekeeper: bool) -> None:
        _, next_due = self.runner.sweep()
        last_sweep = last_cleanup = time.monotonic()
        while not self.stopping.is_set() and not self.signalled:
            until_sweep = self.config.runner_sweep_interval - (time.monotonic() - last_sweep)
            # Wake at least every second while cached SMTP sessions may need closing.
            timeout = min(until_sweep, 1.0)
            if next_due is not None:
                timeout = min(timeout, (next_due - now()).total_seconds())
            self.wake.wait(max(0.0, timeout))
            self.wake.clear()
            if self.stopping.is_set() or self.signalled:
                break
            self.runner.close_idle()
            ids = self.notify.read_new()
            if ids:
                self.runner.submit_ids(ids)
            due_passed = next_due is not None and next_due <= now()
            if due_passed or time.monotonic() - last_sweep >= self.config.runner_sweep_interval:
                _, next_due = self.runner.sweep()
                last_sweep = time.monotonic()
            if housekeeper and (
                time.monotonic() - last_cleanup >= max(60.0, self.config.orphan_grace / 4)
            ):
                self.runner.store.cleanup(self.config.orphan_grace)
                last_cleanup = time.monotonic()
