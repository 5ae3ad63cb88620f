"""Empty files made ahead in ``tmp/``, so that a message's files need not be created while
its client waits for the ``250``.

Creating a file is the one step of an enqueue whose cost is not ours to choose: on ext4
without a journal (this project's test machine), the inode allocator skips every inode of
the directory's block group freed in the last half minute or so, and under a queue's churn
a file then costs 0.7-1.7 ms of kernel time instead of 0.05 ms (``perf``: 34 % of the
receiver's CPU in ``__ext4_new_inode``/``recently_deleted``). An accepted message needs two
new files (its spool and its record), so at one session at a time that was half the wait
after the final dot. The receiver's commit thread makes a few spares once a batch is
answered and no other is waiting (:meth:`SpareFiles.refill`); the next message takes them.
Under load there is no idle moment and every file is created as before: the same work,
only never on the critical path when there is time to do it earlier.

A spare is an empty ``tmp/<pid>.<random>.new``, made and used by one process only. One
taken is renamed to the name its use wants (``.spool`` for a message being received) and
written at once (its mtime moves with the write); one left over from a crash is
an ordinary ``tmp/`` leftover for the queue's cleanup, and one older than
:data:`MAX_AGE` is not used (the cleanup could be removing it after
``TMAIL_ORPHAN_GRACE``): it is removed and a new file is made instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from pathlib import Path

from tmail import fsutil

MAX_AGE = 30.0  # seconds a spare may wait; far below any sensible TMAIL_ORPHAN_GRACE
_FLAGS = os.O_WRONLY | os.O_CLOEXEC


class SpareFiles:
    """One per queue store; thread-safe (the event loop, for a big message's spool, and the
    commit thread both take files)."""

    def __init__(self, tmp_dir: Path, keep: int = 4, max_age: float = MAX_AGE) -> None:
        self._tmp_dir = tmp_dir
        self._keep = keep  # two messages' worth: a spool and one record each
        self._max_age = max_age
        self._ready: deque[tuple[Path, float]] = deque()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def open(self, suffix: str = "") -> tuple[Path, int]:
        """A new empty file ``tmp/<pid>.<random><suffix>`` and a descriptor open for writing
        on it: a spare renamed to that name when one is ready, else a file created now. (In
        ``tmp/``, ``*.new`` are only ever empty spares; everything else is being written.)"""
        path = fsutil.temp_name(self._tmp_dir, suffix)
        while (spare := self._take()) is not None:
            spare_path, made = spare
            if time.monotonic() - made > self._max_age:
                fsutil.unlink_quietly(spare_path)
                continue
            try:
                os.rename(spare_path, path)
            except FileNotFoundError:  # removed by someone (a cleanup with a tiny grace)
                continue
            return path, os.open(path, _FLAGS)
        return path, os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, fsutil.FILE_MODE)

    def write(self, data: bytes) -> Path:
        """``data`` in a new file of ``tmp/`` (not fsync'd: the caller syncs its batch)."""
        path, fd = self.open()
        try:
            fsutil.write_all(fd, data)
        except BaseException:
            os.close(fd)
            fsutil.unlink_quietly(path)
            raise
        os.close(fd)
        return path

    def refill(self) -> None:
        """Make spares up to ``keep`` (from a thread that may block on the disk)."""
        while True:
            with self._lock:
                self._forget_after_fork()
                if len(self._ready) >= self._keep:
                    return
            path = fsutil.temp_name(self._tmp_dir, ".new")
            try:
                os.close(os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, fsutil.FILE_MODE))
            except OSError:  # a full disk or the like: the next message says so itself
                return
            with self._lock:
                self._ready.append((path, time.monotonic()))

    def close(self) -> None:
        """Remove the spares not taken (at the end of a process)."""
        with self._lock:
            ready, self._ready = list(self._ready), deque()
        for path, _ in ready:
            with contextlib.suppress(OSError):
                fsutil.unlink_quietly(path)

    def _take(self) -> tuple[Path, float] | None:
        with self._lock:
            self._forget_after_fork()
            return self._ready.popleft() if self._ready else None

    def _forget_after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's spares are not ours
            self._ready, self._pid = deque(), os.getpid()
