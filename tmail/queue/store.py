"""The queue store: the only code that touches the queue tree.

The SMTP receiver enqueues, the runner claims and completes, the API and the ops CLI read and
change records; all of them go through :class:`QueueStore`. The layout is described in
``layout.py`` and, for ops, in ``docs/queue-format.md``.

Crash safety rests on three rules:

1. Every file of a message (the raw message and its records) is written and ``fsync``'d
   before any name points at it; a record's ``.eml`` link is made before its ``.json``
   appears (by one ``rename``); then every record directory is ``fsync``'d, and only then is
   the message accepted (``enqueue.py``; the Uuid name in ``messages/`` is an index, synced
   lazily). A crash before that leaves whole files only.
2. A record is changed by writing a new file and renaming it over the old one, under the
   record's mutation lock; it is removed by unlinking its ``.json`` first, then its ``.eml``
   link, then the message's Uuid link once no record link is left (the link count says so).
3. Leftovers of a crash (a raw file without records, a record link without its ``.json``, a
   temp file) are removed by :meth:`QueueStore.cleanup` (``housekeeping.py``) only after a
   grace period, so that it never races an enqueue in progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tmail import fsutil
from tmail.config import default_node
from tmail.queue import locks, notify
from tmail.queue.changes import Batch, LockedRecord
from tmail.queue.claims import Claim, claim_candidates, shown_status
from tmail.queue.enqueue import Enqueuer, Envelope, Signer, Target
from tmail.queue.filters import RecordFilter
from tmail.queue.housekeeping import Housekeeping, QuarantinedRecord
from tmail.queue.ids import IdAllocator
from tmail.queue.layout import UUID_PATTERN, QueueLayout, valid_id
from tmail.queue.record import Record, RecordError, now, parse_record
from tmail.queue.scan import LeafMemo, Scanner
from tmail.queue.spool import Spool


class QueueStore:
    """Files plus JSON metadata in a hashed tree; safe for many processes and threads."""

    def __init__(self, root: Path, *, id_block: int = 1, node: str | None = None,
                 signer: Signer | None = None) -> None:
        """``node``: the ``TMAIL_NODE`` new records carry (default: the host name's);
        ``signer``: what signs each message before it is queued (DKIM, for the receiver and
        ``sendmail``: :class:`tmail.dkim.signing.DkimSigner`)."""
        self.layout = QueueLayout(root)
        for directory in self.layout.directories():
            fsutil.makedirs(directory)
        self._ids = IdAllocator(self.layout.counter, block=id_block)
        self._dir_mutex = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._scan = Scanner(self.layout)
        self._housekeeping = Housekeeping(self.layout, self._scan)
        self._enqueuer = Enqueuer(self.layout, self._ids, self._ensure_dir, self._notify,
                                  default_node() if node is None else node, signer)

    def create_message_dirs(self) -> None:
        """Create the 4,096 ``messages/`` leaves now (the last one created marks completion),
        so that no enqueue pays for a ``mkdir``: the SMTP receiver does at start-up.

        Otherwise a leaf is made by the first message that needs it (``enqueue.py``): a
        store opened by a tool, a test or the API costs four directories, not 4,096.
        """
        leaves = self.layout.message_dirs()
        if leaves[-1].is_dir():
            return
        for leaf in leaves:
            with contextlib.suppress(FileExistsError):
                os.mkdir(leaf, 0o750)
        fsutil.fsync_dir(self.layout.messages)

    # --- enqueue ---------------------------------------------------------------------------

    def enqueue(
        self,
        raw: bytes | Spool,
        mail_from: str,
        rcpt_to: Sequence[str | Target],
        *,
        auth_user: str = "",
        client_addr: str = "",
    ) -> list[Record]:
        """Store one message for its recipients; durable when this returns, or raises."""
        [outcome] = self.enqueue_many([Envelope(raw, mail_from, rcpt_to, auth_user,
                                                client_addr)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[list[Record] | Exception]:
        """Store several messages with one round of ``fsync``s (group commit).

        Returns one outcome per envelope, in order: its records, durable and visible, or the
        exception that failed that message alone (:class:`QueueWriteError` for a write
        error, :class:`EnvelopeError` for data a record cannot hold). Nothing of a failed
        message stays in the queue tree, whatever the exception (see ``enqueue.py``).
        """
        return self._enqueuer.enqueue_many(envelopes)

    def spool(self) -> Spool:
        """A temp file in ``tmp/`` to write an arriving message into; pass it as an
        :class:`Envelope`'s ``raw`` to enqueue it without a copy."""
        return Spool(self.layout.tmp, spares=self._enqueuer.spares)

    def prepare_files(self) -> None:
        """Make a few empty files ahead for the next messages (:mod:`.spares`): call it from
        a thread that may block, when nothing else waits to be queued."""
        self._enqueuer.spares.refill()

    def release_files(self) -> None:
        """Remove the files made ahead and not used (a process that stops enqueueing)."""
        self._enqueuer.spares.close()

    def _ensure_dir(self, path: Path) -> None:
        if path in self._known_dirs:
            return
        fsutil.makedirs(path)
        with self._dir_mutex:
            self._known_dirs.add(path)

    def _notify(self, records: Sequence[Record]) -> None:
        """Append hints for the daemon runner (:mod:`tmail.queue.notify`)."""
        notify.append(self.layout.notify, records)

    def wake(self, ids: Sequence[int]) -> None:
        """Ask the daemon runner to look at these records now (after a release or a retry):
        the hints carry each record's Uuid and its new due time."""
        notify.append(self.layout.notify, [r for r in map(self.load, ids) if r is not None])

    # --- reading ---------------------------------------------------------------------------

    def get(self, record_id: int) -> Record | None:
        """The record ``record_id``, or ``None``; ``Status`` 0 while a runner holds its claim
        (see ``claims.py``: 0 is never read from the file).

        A record whose raw message is missing is quarantined and reads as absent.
        """
        record = self.load(record_id)
        if record is None:
            return None
        fd = self._open_raw(record)
        if fd is None:
            return None
        try:
            claimed = locks.is_locked(fd, locks.claim_byte(record_id))
        finally:
            os.close(fd)
        status = shown_status(record.status, claimed)
        return record if status == record.status else record.evolve(status=status)

    def _open_raw(self, record: Record) -> int | None:
        """Open the record's link to its raw message, repairing or quarantining as needed.

        An enqueue cut short can leave a record without its ``.eml`` link while the message
        still has its Uuid name: the link is made again. With no raw message at all the
        record is useless and goes to quarantine. A link this process may not open (another
        user's) is skipped and reported once.
        """
        fd = self._scan.open_record_raw(record.id)
        if fd is None and not os.path.lexists(self.layout.record_raw(record.id)):
            self._relink(record)  # missing, not merely someone else's
            fd = self._scan.open_record_raw(record.id)
        return fd

    def _relink(self, record: Record) -> None:
        path = self.layout.record_raw(record.id)
        try:
            os.link(self.layout.message_raw(record.uuid), path)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if self.layout.record_json(record.id).exists():
                self.quarantine(record.id, "its raw message is missing")
        except OSError as exc:
            self._scan.unreadable.note(record.id, path, exc)

    def load(self, record_id: int) -> Record | None:
        """The record as its file says, but never status 0 (only a claim means that), or
        ``None``; a file that is not a record is quarantined."""
        if not valid_id(record_id):
            return None
        data = self._scan.read_record(record_id)
        if data is None:
            return None
        return self._parse(record_id, data)

    def _parse(self, record_id: int, data: bytes) -> Record | None:
        try:
            record = Record.from_bytes(data, record_id)
        except RecordError as exc:
            self.quarantine(record_id, str(exc))
            return None
        status = shown_status(record.status, claimed=False)
        return record if status == record.status else record.evolve(status=status)

    def iter_ids(self, after: int = 0) -> Iterator[int]:
        """Every record id in ascending order, without reading the records."""
        for _, ids in self._scan.leaves(after):
            yield from ids

    def iter_raw_records(
        self, record_filter: RecordFilter | None = None, *, after: int = 0,
        memo: LeafMemo | None = None,
    ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """The fast path for listings and counts: (parsed JSON, file bytes) in ``Id`` order.

        Records are checked exactly as :meth:`get` checks them (``parse_record``; a file that
        is not a record is quarantined) but not turned into :class:`Record` objects, and the
        API streams the file bytes as they are: at 100,000 records that is the difference
        between a listing in seconds and one in tens of them. Files are opened relative to
        their leaf directory (one path walk per thousand records). ``Status`` is the one
        :meth:`get` shows, derived from the claims (``claims.py``): only the few records
        that are claimed, or say 0, get their bytes rewritten. With ``memo`` (a runner's
        sweep), only the records of the leaf directories that changed since its last pass.
        """
        return self._read_leaves(self._scan.leaves(after, memo), record_filter)

    def iter_raw_records_descending(
        self, record_filter: RecordFilter | None = None, *, before: int = 0,
    ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """:meth:`iter_raw_records` newest first: ``Id`` descending, below ``before`` (a
        page's cursor; 0 for the top). Only the leaf directories it reaches are listed and
        read, so the first page of a 100,000-record queue costs what it costs at 1,000;
        a filter that matches few records reads on until it has found what the caller takes.
        """
        return self._read_leaves(self._scan.leaves_descending(before), record_filter)

    def _read_leaves(
        self, leaves: Iterable[tuple[Path, list[int]]], record_filter: RecordFilter | None,
    ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """The checked records of ``leaves`` (leaf, ids in the order to read them)."""
        moment = now()
        candidates = claim_candidates()
        for leaf, ids in leaves:
            leaf_fd = self._scan.open_dir(leaf)
            if leaf_fd is None:
                continue
            try:
                for record_id in ids:
                    data = self._scan.read_record(record_id, leaf_fd)
                    if data is None:
                        continue  # removed while we walked, or not ours to read
                    try:
                        parsed = parse_record(data, record_id)
                    except RecordError as exc:
                        self.quarantine(record_id, str(exc))
                        continue
                    claimed = (candidates is None or record_id in candidates) and (
                        self.is_claimed(record_id))
                    status = shown_status(parsed["Status"], claimed)
                    if status != parsed["Status"]:
                        parsed["Status"] = int(status)
                        data = json.dumps(parsed, ensure_ascii=False).encode()
                    if record_filter is None or record_filter.matches(parsed, moment):
                        yield parsed, data.rstrip(b"\n")
            finally:
                os.close(leaf_fd)

    def is_claimed(self, record_id: int) -> bool:
        """Whether a runner holds ``record_id``'s delivery claim (exact, three syscalls)."""
        fd = self._scan.open_record_raw(record_id)
        if fd is None:
            return False
        try:
            return locks.is_locked(fd, locks.claim_byte(record_id))
        finally:
            os.close(fd)

    def iter_records(
        self, record_filter: RecordFilter | None = None, *, after: int = 0
    ) -> Iterator[Record]:
        """Records in ``Id`` order, read one at a time so that memory stays flat: the
        listing's records (:meth:`iter_raw_records`), as :class:`Record` objects."""
        for parsed, _ in self.iter_raw_records(record_filter, after=after):
            yield Record.from_json(parsed)

    def read_raw(self, record_id: int) -> bytes | None:
        if not valid_id(record_id):
            return None
        fd = self._scan.open_record_raw(record_id)
        if fd is None:
            return None
        try:
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)

    # --- changing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, record_id: int) -> Iterator[LockedRecord | None]:
        """Hold ``record_id``'s mutation lock; yields ``None`` when the record does not exist.

        Mutation locks are short: nobody delivers or waits on the network while holding one.
        """
        record = self.load(record_id)
        fd = None if record is None else self._open_raw(record)
        if fd is None:
            yield None
            return
        try:
            locks.acquire(fd, locks.mutation_byte(record_id), wait=True)
            # The record may have been removed while we waited for the lock.
            record = self.load(record_id)
            yield None if record is None else self.locked_record(record, fd)
        finally:
            os.close(fd)  # releases every lock taken through fd

    def locked_record(self, record: Record, fd: int, batch: Batch | None = None,
                      on_write: Callable[[Record], None] | None = None) -> LockedRecord:
        """A :class:`LockedRecord` for a caller that holds the mutation lock through ``fd``."""
        return LockedRecord(self.layout, record, fd, batch, on_write)

    def batch(self) -> Batch:
        """Changes of several locked records, made durable together (``changes.py``)."""
        return Batch(self.layout)

    @contextlib.contextmanager
    def claimed(self, record_id: int) -> Iterator[Claim | None]:
        """Hold the delivery claim of ``record_id``, with the record read once: ``None`` if
        another runner is delivering it (or it is gone).

        The claim dies with the process, so a killed runner leaves nothing stuck.
        """
        fd = self._scan.open_record_raw(record_id) if valid_id(record_id) else None
        if fd is None and valid_id(record_id):  # an enqueue cut short: the link is made again
            record = self.load(record_id)
            fd = None if record is None else self._open_raw(record)
        if fd is None:
            yield None
            return
        claim = None
        try:
            if locks.acquire(fd, locks.claim_byte(record_id), wait=False):
                claim = self._claim(record_id, fd)
            yield claim
        finally:
            if claim is not None:
                claim.close()
            else:
                os.close(fd)

    def _claim(self, record_id: int, fd: int) -> Claim | None:
        opened = self._scan.open_record(record_id)
        if opened is None:
            return None
        json_fd, data = opened
        record = self._parse(record_id, data)
        if record is None:
            os.close(json_fd)
            return None
        return Claim(self, record, fd, json_fd)

    # --- quarantine and cleanup (``housekeeping.py``) ----------------------------------------

    def quarantine(self, record_id: int, reason: str) -> None:
        """Move an unusable record aside (never delete it) and say so in the log."""
        self._housekeeping.quarantine(record_id, reason)

    def quarantined(self) -> list[QuarantinedRecord]:
        return self._housekeeping.quarantined()

    def cleanup(self, grace: float) -> int:
        """Remove crash leftovers older than ``grace`` seconds; returns how many."""
        return self._housekeeping.cleanup(grace)

    def find_uuid(self, uuid: str) -> Path | None:
        """The raw message of queue id ``uuid`` (ops: ``queue cat``), or ``None``."""
        if not UUID_PATTERN.match(uuid):
            return None
        path = self.layout.message_raw(uuid)
        return path if path.exists() else None
