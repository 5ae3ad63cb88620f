"""The queue store: the only code that touches the queue tree.

The SMTP receiver enqueues, the runner claims and completes, the API and the ops CLI read and
change records; all of them go through :class:`QueueStore`. The layout is described in
``layout.py`` and, for ops, in ``docs/queue-format.md``.

Crash safety rests on three rules:

1. The raw message is written, ``fsync``'d and linked under every name it will have before
   any record that refers to it appears; a record appears by one ``rename``.
2. A record is changed by writing a new file and renaming it over the old one, under the
   record's mutation lock; it is removed by unlinking its ``.json`` first, then its ``.eml``
   link, then the message's Uuid link once no record link is left (the link count says so).
3. Leftovers of a crash (a raw file without records, a record link without its ``.json``, a
   temp file) are removed by :meth:`QueueStore.cleanup` only after a grace period, so that it
   never races an enqueue in progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tmail import fsutil
from tmail.faults import fault_point
from tmail.message import extract_message_id
from tmail.queue import locks, notify
from tmail.queue.filters import RecordFilter
from tmail.queue.ids import IdAllocator
from tmail.queue.layout import UUID_PATTERN, QueueLayout, record_ids, valid_id
from tmail.queue.record import Record, RecordError, Status, now

log = logging.getLogger(__name__)


class QueueWriteError(OSError):
    """The queue could not store a message; nothing of it is visible (the caller says 451)."""


@dataclass(frozen=True)
class Envelope:
    """What the SMTP receiver (or ``sendmail``) hands to :meth:`QueueStore.enqueue_many`."""

    raw: bytes
    mail_from: str
    rcpt_to: Sequence[str]
    auth_user: str = ""
    client_addr: str = ""


@dataclass(frozen=True)
class QuarantinedRecord:
    id: int
    path: Path
    reason: str
    quarantined_at: datetime


def host_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class LockedRecord:
    """A record held under its mutation lock: read it, rewrite it or remove it.

    Obtained from :meth:`QueueStore.locked`; valid only inside that ``with`` block.
    """

    def __init__(self, store: QueueStore, record: Record, fd: int) -> None:
        self._store = store
        self.record = record
        self.fd = fd  # the open message inode; read the raw message through it (``read_raw``)
        self.removed = False

    @property
    def in_delivery(self) -> bool:
        """Whether a runner holds the delivery claim of this record right now."""
        return locks.is_locked(self.fd, locks.claim_byte(self.record.id))

    def read_raw(self) -> bytes:
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0)

    def write(self, record: Record) -> Record:
        if record.id != self.record.id:
            raise ValueError("a locked record cannot change its Id")
        self._store._write_record(record)
        self.record = record
        return record

    def remove(self) -> None:
        self._store._remove_record(self.record, self.fd)
        self.removed = True


class QueueStore:
    """Files plus JSON metadata in a hashed tree; safe for many processes and threads."""

    def __init__(self, root: Path, *, id_block: int = 1) -> None:
        self.layout = QueueLayout(root)
        for directory in self.layout.directories():
            fsutil.makedirs(directory)
        self._create_message_dirs()
        self._ids = IdAllocator(self.layout.counter, block=id_block)
        self._dir_mutex = threading.Lock()
        self._known_dirs: set[Path] = set()

    def _create_message_dirs(self) -> None:
        """Create the 4,096 ``messages/`` leaves once; the last one created marks completion."""
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
        raw: bytes,
        mail_from: str,
        rcpt_to: Sequence[str],
        *,
        auth_user: str = "",
        client_addr: str = "",
    ) -> list[Record]:
        """Store one message for its recipients; durable when this returns."""
        return self.enqueue_many([Envelope(raw, mail_from, rcpt_to, auth_user, client_addr)])[0]

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[list[Record]]:
        """Store several messages with one round of ``fsync``s (group commit).

        Either every message of the batch is durable and visible when this returns, or an
        exception is raised and none of them is visible.
        """
        if any(not envelope.rcpt_to for envelope in envelopes):
            raise ValueError("a message needs at least one recipient")
        ids = iter(self._ids.allocate(sum(len(e.rcpt_to) for e in envelopes)))
        staged: list[tuple[Path, list[Record]]] = []
        try:
            for envelope in envelopes:
                raw_tmp = fsutil.write_temp(self.layout.tmp, envelope.raw, sync=False)
                staged.append((raw_tmp, self._new_records(envelope, ids)))
            return self._publish(staged)
        except OSError as exc:
            self._unstage(staged)
            raise QueueWriteError(exc.errno, f"cannot write to the queue: {exc}") from exc

    def _new_records(self, envelope: Envelope, ids: Iterator[int]) -> list[Record]:
        uuid = secrets.token_hex(20)
        key = hashlib.sha1(envelope.raw).hexdigest()
        message_id = extract_message_id(envelope.raw)
        moment = now()
        return [
            Record(
                id=next(ids),
                uuid=uuid,
                key=key,
                mail_from=envelope.mail_from,
                auth_user=envelope.auth_user,
                rcpt_to=rcpt,
                message_id=message_id,
                host=host_of(rcpt),
                added_at=moment,
                next_delivery_at=moment,
                status=Status.SCHEDULED,
                size=len(envelope.raw),
                client_addr=envelope.client_addr,
            )
            for rcpt in envelope.rcpt_to
        ]

    def _publish(self, staged: list[tuple[Path, list[Record]]]) -> list[list[Record]]:
        # 1. The raw bytes reach the disk under their Uuid name before any record appears.
        fsutil.fsync_files(raw_tmp for raw_tmp, _ in staged)
        fault_point("enqueue:raw-written")
        for raw_tmp, records in staged:
            os.rename(raw_tmp, self.layout.message_raw(records[0].uuid))
        fsutil.fsync_dirs(self.layout.message_dir(records[0].uuid) for _, records in staged)
        fault_point("enqueue:raw-linked")
        # 2. Each record gets its link to the raw file, then appears by one rename. A crash
        #    between the two leaves a record without its link: ``_relink`` repairs it.
        json_tmps = []
        for _, records in staged:
            for record in records:
                self._ensure_dir(self.layout.record_dir(record.id))
                os.link(self.layout.message_raw(record.uuid), self.layout.record_raw(record.id))
                json_tmps.append(
                    (fsutil.write_temp(self.layout.tmp, record.to_bytes(), sync=False), record)
                )
        fsutil.fsync_files(tmp for tmp, _ in json_tmps)
        for tmp, record in json_tmps:
            os.rename(tmp, self.layout.record_json(record.id))
            fault_point("enqueue:record-renamed")
        fsutil.fsync_dirs(self.layout.record_dir(record.id) for _, record in json_tmps)
        self._notify([record for _, record in json_tmps])
        return [records for _, records in staged]

    def _unstage(self, staged: list[tuple[Path, list[Record]]]) -> None:
        """Undo a failed enqueue: no record of the batch may stay visible."""
        for raw_tmp, records in staged:
            for record in records:
                for path in (self.layout.record_json(record.id), self.layout.record_raw(record.id)):
                    with contextlib.suppress(OSError):
                        fsutil.unlink_quietly(path)
            for path in (raw_tmp, self.layout.message_raw(records[0].uuid)):
                with contextlib.suppress(OSError):
                    fsutil.unlink_quietly(path)

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
        notify.append(self.layout.notify, [r for r in map(self._load, ids) if r is not None])

    # --- reading ---------------------------------------------------------------------------

    def get(self, record_id: int) -> Record | None:
        """The record ``record_id``, or ``None``; ``Status`` 0 only while a runner holds it.

        A record a killed runner left in status 0 reads as 2 (scheduled): its claim is gone.
        A record whose raw message is missing is quarantined and reads as absent.
        """
        record = self._load(record_id)
        if record is None:
            return None
        fd = self._open_raw(record)
        if fd is None:
            return None
        try:
            claimed = locks.is_locked(fd, locks.claim_byte(record_id))
        finally:
            os.close(fd)
        if record.status == Status.IN_DELIVERY and not claimed:
            record = record.evolve(status=Status.SCHEDULED)
        return record

    def _open_raw(self, record: Record) -> int | None:
        """Open the record's link to its raw message, repairing or quarantining as needed.

        An enqueue cut short can leave a record without its ``.eml`` link while the message
        still has its Uuid name: the link is made again. With no raw message at all the
        record is useless and goes to quarantine.
        """
        path = self.layout.record_raw(record.id)
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        try:
            os.link(self.layout.message_raw(record.uuid), path)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if self.layout.record_json(record.id).exists():
                self.quarantine(record.id, "its raw message is missing")
            return None
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # removed meanwhile by another process
            return None

    def _load(self, record_id: int) -> Record | None:
        if not valid_id(record_id):
            return None
        path = self.layout.record_json(record_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = Record.from_bytes(data)
        except RecordError as exc:
            self.quarantine(record_id, str(exc))
            return None
        if record.id != record_id:
            self.quarantine(record_id, f"file {path.name} holds Id {record.id}")
            return None
        return record

    def iter_ids(self, after: int = 0) -> Iterator[int]:
        """Every record id in ascending order, without reading the records."""
        for _, ids in self._iter_leaves(after):
            yield from ids

    def _iter_leaves(self, after: int) -> Iterator[tuple[Path, list[int]]]:
        """Each leaf directory of ``records/`` with its record ids above ``after``, sorted."""
        for top in _numeric_dirs(self.layout.records):
            if (int(top.name) + 1) * 1_000_000 <= after:
                continue
            for leaf in _numeric_dirs(top):
                if int(top.name) * 1_000_000 + (int(leaf.name) + 1) * 1000 <= after:
                    continue
                try:
                    names = os.listdir(leaf)
                except FileNotFoundError:
                    continue
                ids = record_ids(names)
                if after:
                    ids = [record_id for record_id in ids if record_id > after]
                if ids:
                    yield leaf, sorted(ids)

    def iter_raw_records(
        self, record_filter: RecordFilter | None = None, *, after: int = 0
    ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """The fast path for listings and counts: (parsed JSON, file bytes) in ``Id`` order.

        Records are checked (a file that is not a record is quarantined) but not turned into
        :class:`Record` objects, and the API streams the file bytes as they are: at 100,000
        records that is the difference between a listing in seconds and one in tens of them.
        Files are opened relative to their leaf directory (one path walk per thousand records)
        and read with a small buffer: both showed up first in the profile of a 100k summary.
        """
        moment = now()
        for leaf, ids in self._iter_leaves(after):
            try:
                leaf_fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                for record_id in ids:
                    data = _read_at(leaf_fd, f"{record_id}.json")
                    if data is None:
                        continue  # removed while we walked
                    try:
                        parsed = orjson.loads(data)
                        if not isinstance(parsed, dict) or parsed.get("Id") != record_id:
                            raise RecordError("not a queue record")
                        if record_filter is not None and not record_filter.matches_json(
                            parsed, moment
                        ):
                            continue
                    except (ValueError, TypeError, KeyError) as exc:
                        self.quarantine(record_id, f"unreadable record: {exc}")
                        continue
                    yield parsed, data.rstrip(b"\n")
            finally:
                os.close(leaf_fd)

    def iter_records(
        self, record_filter: RecordFilter | None = None, *, after: int = 0
    ) -> Iterator[Record]:
        """Records in ``Id`` order, read one at a time so that memory stays flat.

        Unreadable records are quarantined and skipped; records removed while the walk runs
        are skipped.
        """
        moment = now()
        for record_id in self.iter_ids(after):
            record = self._load(record_id)
            if record is not None and (record_filter is None or record_filter.matches(record,
                                                                                       moment)):
                yield record

    def read_raw(self, record_id: int) -> bytes | None:
        if not valid_id(record_id):
            return None
        try:
            return self.layout.record_raw(record_id).read_bytes()
        except FileNotFoundError:
            return None

    # --- changing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, record_id: int) -> Iterator[LockedRecord | None]:
        """Hold ``record_id``'s mutation lock; yields ``None`` when the record does not exist.

        Mutation locks are short: nobody delivers or waits on the network while holding one.
        """
        record = self._load(record_id)
        fd = None if record is None else self._open_raw(record)
        if fd is None:
            yield None
            return
        try:
            locks.acquire(fd, locks.mutation_byte(record_id), wait=True)
            # The record may have been removed while we waited for the lock.
            record = self._load(record_id)
            yield None if record is None else LockedRecord(self, record, fd)
        finally:
            os.close(fd)  # releases every lock taken through fd

    @contextlib.contextmanager
    def claimed(self, record_id: int) -> Iterator[int | None]:
        """Hold the delivery claim of ``record_id``: yields an open fd of the raw message, or
        ``None`` if another runner is delivering it (or it is gone).

        The claim dies with the process, so a killed runner leaves nothing stuck.
        """
        if not valid_id(record_id):
            yield None
            return
        try:
            fd = os.open(self.layout.record_raw(record_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            if not locks.acquire(fd, locks.claim_byte(record_id), wait=False):
                yield None
                return
            yield fd
        finally:
            os.close(fd)

    def _write_record(self, record: Record) -> None:
        fsutil.replace_atomically(self.layout.record_json(record.id), record.to_bytes(),
                                  self.layout.tmp)

    def _remove_record(self, record: Record, fd: int) -> None:
        directory = self.layout.record_dir(record.id)
        fsutil.unlink_quietly(self.layout.record_json(record.id))
        fault_point("remove:record-unlinked")
        fsutil.unlink_quietly(self.layout.record_raw(record.id))
        fsutil.fsync_dir(directory)
        # With no record link left, only the Uuid name keeps the message alive.
        last_record = os.fstat(fd).st_nlink <= 1
        if last_record and fsutil.unlink_quietly(self.layout.message_raw(record.uuid)):
            fsutil.fsync_dir(self.layout.message_dir(record.uuid))

    # --- quarantine and cleanup ------------------------------------------------------------

    def quarantine(self, record_id: int, reason: str) -> None:
        """Move an unusable record aside (never delete it) and say so in the log."""
        target = self.layout.quarantine
        moved = False
        for path in (self.layout.record_json(record_id), self.layout.record_raw(record_id)):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, target / path.name)
                moved = True
        if moved:
            (target / f"{record_id}.reason").write_text(f"{now().isoformat()} {reason}\n")
            fsutil.fsync_dirs([target, self.layout.record_dir(record_id)])
            log.error("queue record %d quarantined: %s", record_id, reason)

    def quarantined(self) -> list[QuarantinedRecord]:
        found = []
        for reason_file in sorted(self.layout.quarantine.glob("*.reason")):
            stamp, _, reason = reason_file.read_text().strip().partition(" ")
            found.append(
                QuarantinedRecord(
                    id=int(reason_file.stem),
                    path=reason_file.with_suffix(".json"),
                    reason=reason,
                    quarantined_at=datetime.fromisoformat(stamp),
                )
            )
        return sorted(found, key=lambda item: item.id)

    def cleanup(self, grace: float) -> int:
        """Remove crash leftovers older than ``grace`` seconds; returns how many.

        Leftovers: temp files, record ``.eml`` links without a ``.json`` (a removal cut short),
        and raw messages whose only name is their Uuid (an enqueue cut short).
        """
        deadline = now().timestamp() - grace
        removed = 0
        for entry in _scan(self.layout.tmp):
            if entry.stat().st_mtime < deadline:
                removed += fsutil.unlink_quietly(entry.path)
        for top in _numeric_dirs(self.layout.records):
            for leaf in _numeric_dirs(top):
                for entry in _scan(leaf):
                    if (
                        entry.name.endswith(".eml")
                        and entry.stat().st_mtime < deadline
                        and not os.path.exists(entry.path[: -len(".eml")] + ".json")
                    ):
                        removed += fsutil.unlink_quietly(entry.path)
        for leaf in _scan(self.layout.messages):
            for entry in _scan(Path(leaf.path)):
                info = entry.stat()
                if info.st_nlink <= 1 and info.st_mtime < deadline:
                    removed += fsutil.unlink_quietly(entry.path)
        if removed:
            log.warning("queue cleanup removed %d leftovers of interrupted writes", removed)
        return removed

    def find_uuid(self, uuid: str) -> Path | None:
        """The raw message of queue id ``uuid`` (ops: ``queue cat``), or ``None``."""
        if not UUID_PATTERN.match(uuid):
            return None
        path = self.layout.message_raw(uuid)
        return path if path.exists() else None


def _read_at(dir_fd: int, name: str) -> bytes | None:
    """The whole file ``name`` in ``dir_fd``, or ``None`` when it is gone.

    A record is a few hundred bytes: one small read does it. Asking ``os.read`` for a big
    buffer instead costs a large allocation per call, which dominated listing time.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 8192)
        if len(data) < 8192:
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _numeric_dirs(path: Path) -> list[Path]:
    return sorted(
        (Path(entry.path) for entry in _scan(path) if entry.name.isdigit() and entry.is_dir()),
        key=lambda p: int(p.name),
    )
