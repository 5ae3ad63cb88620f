"""Walking and reading the queue tree without ever failing on one file.

The queue is shared by several processes and, sometimes, by several users: a cron job that
runs ``sendmail`` as root, an admin's CLI. A file or directory that the current process
cannot read must cost it that one file, not the whole sweep, listing or summary: it is
skipped and reported once per process (not at every sweep), with what to do about it. A file
that vanishes while we walk (another process removed it) is simply skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tmail.queue.layout import QueueLayout, record_ids

log = logging.getLogger("tmail.queue")

_MAX_REMEMBERED = 10_000  # bounded: a queue full of foreign files must not grow memory

# How old a directory's last change must be for a stamp of it to be trusted. Timestamps
# come from the kernel's coarse clock (a tick, a few ms): a change in the same tick as the
# one a stamp saw would leave the stamp as it was. A second is generous for any local disk.
CLOCK_MARGIN = 1.0


class Unreadable:
    """What this process could not read, so that each one is logged once."""

    def __init__(self) -> None:
        self._seen: set[str | int] = set()
        self._mutex = threading.Lock()

    def note(self, key: str | int, path: Path | str, exc: OSError) -> None:
        """Report ``path`` (a record, keyed by its Id, or a directory) the first time."""
        with self._mutex:
            if key in self._seen:
                return
            if len(self._seen) >= _MAX_REMEMBERED:
                self._seen.clear()
            self._seen.add(key)
        try:
            owner = os.stat(path).st_uid
        except OSError:
            owner = -1
        log.warning(
            "cannot read %s (%s; owned by uid %d, we are uid %d): skipped until it is fixed; "
            "if another user (root?) wrote it, chown it to the queue's owner",
            path, exc.strerror or exc, owner, os.geteuid(),
        )


class LeafMemo:
    """What one reader (a runner's sweep) saw of each leaf directory of ``records/``, so that
    its next pass reads only the leaves something changed in.

    Every change of a record goes through its directory: a record appears, is rewritten and
    is removed by ``rename`` and ``unlink`` (docs/queue-format.md), and each of those moves
    the directory's mtime and ctime. A leaf whose stamp (inode, mtime, ctime) is the one of
    the last pass holds the records it held then, unchanged. A stamp is kept only once the
    leaf has been read to the end (a pass cut short reads it again) and only if the leaf's
    last change is older than :data:`CLOCK_MARGIN` (two changes within one clock tick could
    leave one stamp). Editing a record in place, not by ``rename``, is not seen here.
    """

    def __init__(self) -> None:
        self._stamps: dict[Path, tuple[int, int, int]] = {}
        self._pending: dict[Path, tuple[int, int, int] | None] = {}
        self._started = 0.0
        self.read: set[Path] = set()  # leaves read in the current pass
        self.present: set[Path] = set()  # leaves that exist in the current pass

    def begin(self) -> None:
        """Start a pass; stamps of leaves that are gone are dropped at :meth:`end`."""
        self._started = time.time()
        self._pending.clear()
        self.read, self.present = set(), set()

    def unchanged(self, leaf: Path) -> bool:
        """Whether ``leaf`` is as the last pass read it (then the caller skips it)."""
        self.present.add(leaf)
        try:
            info = os.stat(leaf)
        except OSError:
            return False  # the caller's own read reports it (or finds it gone)
        stamp = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        if self._stamps.get(leaf) == stamp:
            return True
        trusted = info.st_ctime < self._started - CLOCK_MARGIN
        self._pending[leaf] = stamp if trusted else None
        return False

    def done(self, leaf: Path) -> None:
        """``leaf`` has been read to the end in this pass."""
        stamp = self._pending.pop(leaf, None)
        if stamp is None:
            self._stamps.pop(leaf, None)
        else:
            self._stamps[leaf] = stamp
        self.read.add(leaf)

    def end(self) -> None:
        for leaf in [leaf for leaf in self._stamps if leaf not in self.present]:
            del self._stamps[leaf]


class Scanner:
    """Directory walks and small reads over one queue tree."""

    def __init__(self, layout: QueueLayout) -> None:
        self.layout = layout
        self.unreadable = Unreadable()

    def entries(self, path: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                return list(entries)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.unreadable.note(str(path), path, exc)
            return []

    def numeric_dirs(self, path: Path) -> list[Path]:
        return sorted(
            (Path(entry.path) for entry in self.entries(path)
             if entry.name.isdigit() and entry.is_dir()),
            key=lambda p: int(p.name),
        )

    def leaves(self, after: int = 0,
               memo: LeafMemo | None = None) -> Iterator[tuple[Path, list[int]]]:
        """Each leaf directory of ``records/`` with its record ids above ``after``, sorted;
        with ``memo``, only the leaves that changed since the memo's last pass."""
        for top in self.numeric_dirs(self.layout.records):
            if (int(top.name) + 1) * 1_000_000 <= after:
                continue
            for leaf in self.numeric_dirs(top):
                if int(top.name) * 1_000_000 + (int(leaf.name) + 1) * 1000 <= after:
                    continue
                if memo is not None and memo.unchanged(leaf):
                    continue
                ids = record_ids([entry.name for entry in self.entries(leaf)])
                if after:
                    ids = [record_id for record_id in ids if record_id > after]
                if ids:
                    yield leaf, sorted(ids)
                if memo is not None:  # not reached when the reader stops within the leaf
                    memo.done(leaf)

    def leaves_descending(self, before: int = 0) -> Iterator[tuple[Path, list[int]]]:
        """Each leaf directory of ``records/`` with its record ids below ``before`` (all of
        them when 0), highest first, ids in descending order: a "newest first" page reads
        the leaves at the top of the tree and stops, whatever the size of the queue.

        Ids are found from the names alone (``layout.py``): a leaf (and a top directory)
        whose whole id range lies at or above ``before`` is skipped without listing it.
        """
        for top in reversed(self.numeric_dirs(self.layout.records)):
            if before and int(top.name) * 1_000_000 >= before:
                continue
            for leaf in reversed(self.numeric_dirs(top)):
                if before and int(top.name) * 1_000_000 + int(leaf.name) * 1000 >= before:
                    continue
                ids = record_ids([entry.name for entry in self.entries(leaf)])
                if before:
                    ids = [record_id for record_id in ids if record_id < before]
                if ids:
                    yield leaf, sorted(ids, reverse=True)

    def open_dir(self, path: Path) -> int | None:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable.note(str(path), path, exc)
            return None

    def read_record(self, record_id: int, dir_fd: int | None = None) -> bytes | None:
        """The bytes of record ``record_id``'s file, or ``None`` when it is gone or cannot
        be read (reported once). With ``dir_fd`` (its leaf, open) no path is walked."""
        name = f"{record_id}.json"
        try:
            if dir_fd is None:
                fd = os.open(self.layout.record_json(record_id), os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable.note(record_id, self.layout.record_json(record_id), exc)
            return None
        try:
            return _read_all(fd)
        except OSError as exc:
            self.unreadable.note(record_id, self.layout.record_json(record_id), exc)
            return None
        finally:
            os.close(fd)

    def open_record(self, record_id: int) -> tuple[int, bytes] | None:
        """Record ``record_id``'s file, open, and its bytes (a claim keeps it open to see
        later, with one ``stat``, whether it was replaced); ``None`` like :meth:`read_record`."""
        path = self.layout.record_json(record_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable.note(record_id, path, exc)
            return None
        try:
            return fd, _read_all(fd)
        except OSError as exc:
            os.close(fd)
            self.unreadable.note(record_id, path, exc)
            return None

    def open_record_raw(self, record_id: int) -> int | None:
        """An ``O_RDWR`` fd of the record's ``.eml`` link (locks are taken through it), or
        ``None`` when it is gone or not ours (reported once)."""
        path = self.layout.record_raw(record_id)
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable.note(record_id, path, exc)
            return None


def _read_all(fd: int) -> bytes:
    """A record is a few hundred bytes: one small read does it. Asking ``os.read`` for a big
    buffer instead costs a large allocation per call, which dominated listing time."""
    data = os.read(fd, 8192)
    if len(data) < 8192:
        return data
    chunks = [data]
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
