"""Delivery claims: who is delivering what, and a runner's hold on one record for an attempt.

Status 0 ("in delivery") is never written to a record file: the delivery claim (an OFD lock,
see ``locks.py``) is the truth, and it dies with the runner, so a killed runner can never
leave a record that *says* it is in delivery. The file keeps its scheduled state (or an
admin's mark) while an attempt runs and is rewritten only with the attempt's outcome. Every
reader derives the status it shows with :func:`shown_status`.

Checking the claim of every record of a 100,000-record listing would cost three system calls
per record; :func:`claim_candidates` instead reads ``/proc/locks`` once, and only the records
it names (a claim is one odd byte of a message's inode, byte ``2*Id + 1``) are checked
through their own ``.eml`` link, which is exact.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tmail.queue import locks
from tmail.queue.record import Record, Status

if TYPE_CHECKING:
    from tmail.queue.store import Batch, LockedRecord, QueueStore

PROC_LOCKS = "/proc/locks"


def shown_status(on_disk: int, claimed: bool) -> Status:
    """The status a reader shows: 0 while claimed (unless an admin's mark 1, 3 or 4 is
    pending: that is what ops need to see); a 0 on disk (written by an older version) means
    nothing without its claim and reads as 2."""
    if on_disk in (Status.IN_DELIVERY, Status.SCHEDULED):
        return Status.IN_DELIVERY if claimed else Status.SCHEDULED
    return Status(on_disk)


def claim_candidates() -> set[int] | None:
    """The record Ids that may be claimed right now, from one read of ``/proc/locks``;
    ``None`` when it cannot be read (then every record must be checked).

    A candidate is any 1-byte OFD lock on an odd byte: other programs' locks may add
    candidates, never hide one, and each candidate is checked for real by the caller.
    """
    try:
        with open(PROC_LOCKS, "rb") as file:
            text = file.read()
    except OSError:
        return None
    ids = set()
    for line in text.splitlines():
        fields = line.split()  # "1: OFDLCK ADVISORY WRITE -1 08:01:1234 3 3"
        if len(fields) == 8 and fields[1] == b"OFDLCK" and fields[6] == fields[7]:
            start = int(fields[6])
            if start % 2:
                ids.add(start // 2)
    return ids


class Claim:
    """A runner's delivery claim on one record, for one attempt.

    The record is read once, when the claim is taken; its file stays open, so that
    :meth:`locked` can tell with one ``stat`` whether an admin rewrote it meanwhile (a
    rewrite is a ``rename`` of a new file: a new inode, and the old one cannot be reused
    while we hold it open). The mutation lock is taken through the claim's own descriptor.
    """

    def __init__(self, store: QueueStore, record: Record, fd: int, json_fd: int) -> None:
        self.store = store
        self.record = record
        self.fd = fd  # the message's inode, through the record's ``.eml`` link
        self._json_fd: int | None = json_fd

    @property
    def id(self) -> int:
        return self.record.id

    def read_raw(self) -> bytes:
        return os.pread(self.fd, os.fstat(self.fd).st_size, 0)

    @contextlib.contextmanager
    def locked(self, batch: Batch | None = None) -> Iterator[LockedRecord | None]:
        """Hold the record's mutation lock; yields ``None`` if the record is gone.

        With ``batch``, writes and removals wait for :meth:`Batch.commit`, which the caller
        runs before the lock is released.
        """
        byte = locks.mutation_byte(self.id)
        locks.acquire(self.fd, byte, wait=True)
        try:
            if not self._unchanged():
                self._forget_file()
                record = self.store.load(self.id)
                if record is None:
                    yield None
                    return
                self.record = record
            yield self.store.locked_record(self.record, self.fd, batch, on_write=self._written)
        finally:
            locks.release(self.fd, byte)

    def _unchanged(self) -> bool:
        if self._json_fd is None:
            return False
        try:
            return os.path.samestat(os.stat(self.store.layout.record_json(self.id)),
                                    os.fstat(self._json_fd))
        except FileNotFoundError:
            return False

    def _written(self, record: Record) -> None:
        self.record = record
        self._forget_file()  # ours now replaced: the next lock reads the file again

    def _forget_file(self) -> None:
        if self._json_fd is not None:
            os.close(self._json_fd)
            self._json_fd = None

    def close(self) -> None:
        """Drop the claim (and every lock taken through its descriptor)."""
        self._forget_file()
        os.close(self.fd)
