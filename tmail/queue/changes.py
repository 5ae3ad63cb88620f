"""Changing records: rewrite or remove them, one at a time or a message's recipients at once.

A change is made under the record's mutation lock (:class:`LockedRecord`). The runner ends
an attempt for all the recipients of a message together: their changes go into one
:class:`Batch`, committed before the locks are released, so that the whole message costs
one round of file ``fsync``s and one ``fsync`` per directory instead of one of each per
recipient. The order of the steps is what keeps a crash harmless:

1. rewritten records: new files in ``tmp/``, all ``fsync``'d, then each renamed over its old
   file (a reader sees the old record or the new one);
2. removed records: every ``<Id>.json`` unlinked first (the record is gone), then every
   ``<Id>.eml`` link;
3. the record directories are ``fsync``'d, once each: the changes are durable;
4. only then the raw message, once no record link is left (its link count says so). Were 4
   made durable before 3, a crash could keep a record whose message is gone. Its directory
   is not ``fsync``'d: a crash that undoes this unlink leaves the raw file with its Uuid name
   alone (link count 1), the leftover of a cut-short enqueue that the cleanup removes
   (``housekeeping.py``); it saves a delivered message one of its two ``fsync``s.

A crash before 3 may bring removed records back: they are delivered again (at-least-once),
never lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tmail import fsutil
from tmail.faults import fault_point
from tmail.queue import locks
from tmail.queue.layout import QueueLayout
from tmail.queue.record import Record


class Batch:
    """Record writes and removals, made durable together by :meth:`commit`."""

    def __init__(self, layout: QueueLayout) -> None:
        self.layout = layout
        self._writes: dict[int, Record] = {}
        self._removes: dict[int, tuple[Record, int]] = {}

    def write(self, record: Record) -> None:
        self._writes[record.id] = record

    def remove(self, record: Record, fd: int) -> None:
        """``fd``: the message's inode (its link count tells when the last record is gone)."""
        self._writes.pop(record.id, None)
        self._removes[record.id] = (record, fd)

    def commit(self) -> None:
        writes, removes = list(self._writes.values()), list(self._removes.values())
        self._writes, self._removes = {}, {}
        layout = self.layout
        temps = [fsutil.write_temp(layout.tmp, record.to_bytes(), sync=False)
                 for record in writes]
        try:
            fsutil.fsync_files(temps)
            if temps:
                fault_point("replace:temp-written")
            for record, temp in zip(writes, temps, strict=True):
                os.rename(temp, layout.record_json(record.id))
        except BaseException:
            for temp in temps:
                fsutil.unlink_quietly(temp)
            raise
        for record, _ in removes:
            fsutil.unlink_quietly(layout.record_json(record.id))
        if removes:
            fault_point("remove:record-unlinked")
        for record, _ in removes:
            fsutil.unlink_quietly(layout.record_raw(record.id))
        fsutil.fsync_dirs(layout.record_dir(record.id) for record in [*writes,
                                                                      *(r for r, _ in removes)])
        gone: set[str] = set()
        for record, fd in removes:
            # With no record link left, only the Uuid name keeps the message alive.
            if record.uuid not in gone and os.fstat(fd).st_nlink <= 1:
                fsutil.unlink_quietly(layout.message_raw(record.uuid))
                gone.add(record.uuid)


class LockedRecord:
    """A record held under its mutation lock: read it, rewrite it or remove it.

    Obtained from :meth:`QueueStore.locked` or :meth:`Claim.locked`; valid only inside that
    ``with`` block. Without a batch of its own, each change is durable when it returns.
    """

    def __init__(self, layout: QueueLayout, record: Record, fd: int, batch: Batch | None,
                 on_write: Callable[[Record], None] | None = None) -> None:
        self.record = record
        self.fd = fd  # the open message inode; read the raw message through it (``read_raw``)
        self.removed = False
        self._layout = layout
        self._batch = batch
        self._on_write = on_write

    @property
    def in_delivery(self) -> bool:
        """Whether a runner holds the delivery claim of this record right now (through
        another descriptor: a claim taken through ``fd`` is the caller's own)."""
        return locks.is_locked(self.fd, locks.claim_byte(self.record.id))

    def read_raw(self) -> bytes:
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0)

    def write(self, record: Record) -> Record:
        if record.id != self.record.id:
            raise ValueError("a locked record cannot change its Id")
        self._change(lambda batch: batch.write(record))
        self.record = record
        if self._on_write is not None:
            self._on_write(record)
        return record

    def remove(self) -> None:
        self._change(lambda batch: batch.remove(self.record, self.fd))
        self.removed = True

    def _change(self, change: Callable[[Batch], None]) -> None:
        if self._batch is not None:
            change(self._batch)
            return
        batch = Batch(self._layout)
        change(batch)
        batch.commit()
