"""Record ids: unique across processes and restarts, never reused.

The counter file holds the next free id as decimal text. A process takes ``flock`` on it,
reads it, writes the advanced value and ``fsync``s it *before* using any id of the block, so a
crash can waste ids but never hand one out twice. To keep the fsync off the per-message path
a long-lived process reserves a block of ids at a time; ids from two processes therefore
interleave (``Id`` order is allocation order within a process, not global arrival order).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class IdAllocator:
    def __init__(self, counter: Path, block: int = 1) -> None:
        self._counter = counter
        self._block = max(1, block)
        self._mutex = threading.Lock()
        self._next = 0
        self._end = 0
        self._pid = os.getpid()

    def allocate(self, count: int) -> list[int]:
        """Return ``count`` fresh ids, ascending."""
        with self._mutex:
            if self._pid != os.getpid():
                # A forked child (gunicorn worker) must not reuse its parent's reserved block.
                self._pid, self._next, self._end = os.getpid(), 0, 0
            if self._end - self._next < count:
                self._next, self._end = self._reserve(max(count, self._block))
            ids = list(range(self._next, self._next + count))
            self._next += count
            return ids

    def _reserve(self, count: int) -> tuple[int, int]:
        fd = os.open(self._counter, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 64, 0).strip()
            first = int(text) if text else 1
            end = first + count
            payload = f"{end:<20d}\n".encode()  # fixed width: the rewrite never shrinks the file
            os.pwrite(fd, payload, 0)
            os.fsync(fd)
            return first, end
        finally:
            os.close(fd)  # releases the flock
