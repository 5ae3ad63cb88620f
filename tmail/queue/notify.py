"""The notify file: hints that wake the daemon runner, written by every writer of the queue.

inotify is not recursive and can overflow, so the daemon runner watches one flat file instead
of the queue tree. Every enqueue, release and retry appends one line per record::

    <Id> <Uuid> <due>

``due`` is the record's ``NextDeliveryScheduledAt`` as Unix time. The Uuid is what the daemon's
workers split the messages on, so a worker drops the hints of the other workers' messages
without reading their records; the due time lets it schedule a record without reading it
either. Hints are not durable (no ``fsync``): the runner sweeps the whole queue at start-up
and periodically, so a lost hint delays a delivery, never loses it.

Rotation must hold with several readers (the daemon's workers) and with none (cron alone).
The file is never truncated: once it has grown past :data:`ROTATE_AT`, a reader that has read
it to the end (or ``--once``, whose sweep covers every hint written before it) renames it to
``notify.old`` under an ``flock`` of the file, and the next writer creates a new one. Readers
keep the old file open when they see the name point to another inode, read what is left in
it, and keep reading it for :data:`RETIRE_AFTER` seconds (a writer may have opened it just
before the rename); a reader that finds a ``notify.old`` it never held reads all of it (a
burst filled and rotated a whole file between two of its reads). So the two files hold at
most about twice ``ROTATE_AT`` bytes, and a hint is lost only if two rotations happen between
two reads of a worker, which the periodic sweep covers.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tmail.queue.record import Record

log = logging.getLogger(__name__)

ROTATE_AT = 256 * 1024  # bytes: about 4,000 hints
RETIRE_AFTER = 5.0  # seconds a rotated file is still read


@dataclass(frozen=True)
class Hint:
    id: int
    uuid: str
    due: float  # Unix time


def hint_of(record: Record) -> Hint:
    return Hint(record.id, record.uuid, record.next_delivery_at.timestamp())


def format_hints(hints: Iterable[Hint]) -> bytes:
    return "".join(f"{h.id} {h.uuid} {h.due:.6f}\n" for h in hints).encode()


def parse_hints(data: bytes) -> list[Hint]:
    """The hints of complete lines; anything else (a line of another format) is skipped."""
    hints = []
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit():
            continue
        try:
            hints.append(Hint(int(fields[0]), fields[1].decode("ascii"), float(fields[2])))
        except ValueError:
            continue
    return hints


def append(path: Path, records: Iterable[Record]) -> None:
    """Append the hints of ``records`` in one ``write`` (``O_APPEND``: whole lines never mix)."""
    payload = format_hints(map(hint_of, records))
    if not payload:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
    except OSError:
        log.warning("cannot append to %s; the runner will find the records by sweeping", path,
                    exc_info=True)


def rotate_if_large(path: Path, rotate_at: int = ROTATE_AT) -> bool:
    """Rename ``path`` to ``<path>.old`` if it has ``rotate_at`` bytes or more.

    The ``flock`` and the inode check make concurrent rotators harmless: the second one finds
    that the name now points to a new (small) file and leaves it alone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process is rotating it
        info = os.fstat(fd)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            return False
        if current != info.st_ino or info.st_size < rotate_at:
            return False
        os.rename(path, old_path(path))
        return True
    finally:
        os.close(fd)


def old_path(path: Path) -> Path:
    return path.with_name(path.name + ".old")


class _Open:
    """One notify file held open, and how far it has been read."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.inode = os.fstat(fd).st_ino
        self.offset = offset
        self.retired_at = 0.0

    def read_new(self) -> bytes:
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, max(0, size - self.offset), self.offset)
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
        self.offset += len(complete)
        return complete


class NotifyReader:
    """Reads the hints appended since the last call, across rotations (see the module doc)."""

    def __init__(self, path: Path, rotate_at: int = ROTATE_AT) -> None:
        self.path = path
        self.rotate_at = rotate_at
        self._current: _Open | None = None
        self._retired: list[_Open] = []
        self._seen: collections.deque[int] = collections.deque(maxlen=8)  # inodes read

    def skip_to_end(self) -> None:
        """Start from the current end: what is already there is the start-up sweep's."""
        self._switch(to_end=True)
        with contextlib.suppress(FileNotFoundError):
            self._seen.append(os.stat(old_path(self.path)).st_ino)

    def read_new(self) -> list[Hint]:
        chunks = self._drain_retired()
        if self._current is None or not self._still_current():
            if self._current is not None:
                chunks.append(self._current.read_new())
            self._switch(to_end=False)
            chunks.append(self._read_missed_generation())
        if self._current is not None:
            chunks.append(self._current.read_new())
            if self._current.offset >= self.rotate_at:
                rotate_if_large(self.path, self.rotate_at)
        return parse_hints(b"".join(chunks))

    def close(self) -> None:
        for opened in self._held():
            os.close(opened.fd)
        self._current, self._retired = None, []

    def _held(self) -> list[_Open]:
        return [*self._retired, *([self._current] if self._current else [])]

    def _still_current(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self._current.inode  # type: ignore[union-attr]
        except FileNotFoundError:
            return False

    def _switch(self, *, to_end: bool) -> None:
        """Retire the file held (if any) and open the one the name points to now."""
        if self._current is not None:
            self._current.retired_at = time.monotonic()
            self._retired.append(self._current)
            self._current = None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        self._current = _Open(fd, os.fstat(fd).st_size if to_end else 0)
        self._seen.append(self._current.inode)

    def _read_missed_generation(self) -> bytes:
        """``notify.old`` when it is a file this reader never held: it was created and
        rotated between two of our reads (a burst of hints), so all of it is new to us."""
        try:
            fd = os.open(old_path(self.path), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        opened = _Open(fd, 0)
        if opened.inode in self._seen:
            os.close(fd)
            return b""
        self._seen.append(opened.inode)
        opened.retired_at = time.monotonic()
        self._retired.append(opened)
        return opened.read_new()

    def _drain_retired(self) -> list[bytes]:
        chunks = []
        moment = time.monotonic()
        for opened in list(self._retired):
            chunks.append(opened.read_new())
            if moment - opened.retired_at >= RETIRE_AFTER:
                with contextlib.suppress(OSError):
                    os.close(opened.fd)
                self._retired.remove(opened)
        return chunks
