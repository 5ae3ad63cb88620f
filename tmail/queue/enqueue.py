"""Enqueue with group commit: several messages share one round of ``fsync``s, and each one
succeeds or fails on its own.

A message goes through three steps (see the module docstring of ``store.py`` for the rules):

1. *staging* (per message): the envelope is checked, its raw bytes are in a temp file (a
   :class:`Spool`, or bytes written into one), its records are built and serialised into temp
   files. Anything that goes wrong here (bad data, a full disk) drops that message only.
2. *publishing* (the batch, in two rounds of ``fsync``): every temp file is ``fsync``ed
   together; then the raw files are renamed into ``messages/``, the record links are made,
   the records appear by rename; then every directory is ``fsync``ed together. A failure
   is charged to the message it hit.
3. *cleanup* of every message that failed, whatever the exception: its records, links, raw
   file and temp files are removed, so nothing of it stays visible.

The result is one outcome per envelope, in order: its records, or the exception that failed
it (like ``asyncio.gather(..., return_exceptions=True)``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tmail import fsutil
from tmail.address import domain_of
from tmail.faults import fault_point
from tmail.message import extract_message_id
from tmail.queue.errors import EnvelopeError, QueueWriteError
from tmail.queue.ids import IdAllocator
from tmail.queue.layout import QueueLayout
from tmail.queue.record import Record, Status, now
from tmail.queue.spares import SpareFiles
from tmail.queue.spool import Spool, SpooledFile

Outcome = list[Record] | Exception


@dataclass(frozen=True)
class Target:
    """A final recipient with what alias expansion knows of it: ``orig_rcpt`` the address
    the client gave, ``pipe`` a command to deliver to (its record's Transport is "pipe"),
    ``mail_from`` a mini-list's address, the record's sender instead of the envelope's (so
    that bounces go to the list, not back to each member)."""

    rcpt_to: str
    orig_rcpt: str = ""
    pipe: str = ""
    mail_from: str | None = None


@dataclass(frozen=True)
class Envelope:
    """What the SMTP receiver (or ``sendmail``) hands to ``QueueStore.enqueue_many``.

    ``raw`` is the whole message, either as bytes or as a :class:`Spool` it was written into
    while it arrived; a spool is consumed by the enqueue, whatever its outcome.
    """

    raw: bytes | Spool
    mail_from: str
    rcpt_to: Sequence[str | Target]
    auth_user: str = ""
    client_addr: str = ""

    @property
    def targets(self) -> list[Target]:
        return [r if isinstance(r, Target) else Target(r) for r in self.rcpt_to]


def check_envelope(envelope: Envelope) -> None:
    """Refuse what a record cannot hold faithfully, before any file is written.

    Records are UTF-8 JSON read by the runner, the API and ops tools: an address with a lone
    surrogate (8-bit bytes aiosmtpd decoded with ``surrogateescape``) cannot be written at all,
    and one with a control character would forge log lines or SMTP commands downstream.
    """
    if not envelope.rcpt_to:
        raise EnvelopeError("a message needs at least one recipient")
    fields = [("sender", envelope.mail_from), ("authenticated user", envelope.auth_user),
              ("client address", envelope.client_addr)]
    for target in envelope.targets:
        fields += [("recipient", target.rcpt_to), ("original recipient", target.orig_rcpt),
                   ("pipe command", target.pipe), ("list sender", target.mail_from or "")]
    for name, value in fields:
        _check_text(name, value)


def _check_text(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise EnvelopeError(f"the {name} is not text: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError(f"the {name} {value!r} is not valid UTF-8") from exc
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise EnvelopeError(f"the {name} {value!r} contains a control character")


@dataclass
class _Staged:
    """One message on its way into the queue, with every file that is still to be undone."""

    index: int
    raw: SpooledFile
    records: list[Record]
    json_tmps: list[Path] = field(default_factory=list)
    error: Exception | None = None
    made_leaf: bool = False  # its messages/ leaf was missing: messages/ is fsync'd too

    @property
    def uuid(self) -> str:
        return self.records[0].uuid


# A hook that may rewrite a complete message before its records are made (DKIM signing,
# tmail.dkim.signing): it returns the file to queue (a new one replaces and removes the old).
Signer = Callable[[Envelope, SpooledFile], SpooledFile]


class Enqueuer:
    """The enqueue path of one store (its layout, its id allocator, its known directories,
    the name of the node whose queue it is, which every new record carries, and its
    signer)."""

    def __init__(self, layout: QueueLayout, ids: IdAllocator,
                 ensure_dir: Callable[[Path], None],
                 notify: Callable[[list[Record]], None], node: str,
                 signer: Signer | None = None) -> None:
        self.layout = layout
        self.node = node
        self._signer = signer
        self._ids = ids
        self._ensure_dir = ensure_dir
        self._notify = notify
        self.spares = SpareFiles(layout.tmp)  # files made ahead (spares.py)

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(envelopes)
        staged: list[_Staged] = []
        try:
            files = [self._take_raw(envelope, outcomes, index)
                     for index, envelope in enumerate(envelopes)]
            ready = [(index, raw) for index, raw in enumerate(files) if raw is not None]
            ids = iter(self._allocate(envelopes, ready, outcomes))
            for index, raw in ready:
                try:
                    if self._signer is not None:
                        raw = self._signer(envelopes[index], raw)
                    item = _Staged(index, raw, self._new_records(envelopes[index], raw, ids))
                except Exception as exc:
                    _remove(raw.path)
                    outcomes[index] = _as_outcome(exc)
                    continue
                staged.append(item)
                self._step([item], self._write_records)
            self._publish([item for item in staged if item.error is None])
        except BaseException:  # KeyboardInterrupt, or a bug here: undo everything not done
            for item in staged:
                if outcomes[item.index] is None and item.error is None:
                    item.error = RuntimeError("enqueue interrupted")
            self._finish(staged, outcomes)
            raise
        self._finish(staged, outcomes)
        return [outcome if outcome is not None else RuntimeError("not enqueued")
                for outcome in outcomes]

    # --- staging -------------------------------------------------------------------------

    def _take_raw(self, envelope: Envelope, outcomes: list[Outcome | None],
                  index: int) -> SpooledFile | None:
        """The message's checked envelope and complete temp file, or ``None`` (and its
        outcome set) when it cannot be queued. A spool is consumed either way."""
        spool = envelope.raw if isinstance(envelope.raw, Spool) else None
        try:
            check_envelope(envelope)
            if spool is None:
                spool = Spool(self.layout.tmp, spares=self.spares)
                spool.write(envelope.raw)  # type: ignore[arg-type]
            return spool.take()
        except Exception as exc:
            if spool is not None:
                spool.discard()
            outcomes[index] = _as_outcome(exc)
            return None

    def _allocate(self, envelopes: Sequence[Envelope], ready: list[tuple[int, SpooledFile]],
                  outcomes: list[Outcome | None]) -> list[int]:
        try:
            return self._ids.allocate(sum(len(envelopes[index].rcpt_to) for index, _ in ready))
        except Exception as exc:
            for index, raw in ready:
                _remove(raw.path)
                outcomes[index] = _as_outcome(exc)
            ready.clear()
            return []

    def _new_records(self, envelope: Envelope, raw: SpooledFile,
                     ids: Iterable[int]) -> list[Record]:
        uuid = secrets.token_hex(20)
        message_id = extract_message_id(raw.headers)
        moment = now()
        id_iter = iter(ids)
        return [
            Record(
                id=next(id_iter),
                uuid=uuid,
                key=raw.key,
                mail_from=_sender(envelope, target),
                auth_user=envelope.auth_user,
                rcpt_to=target.rcpt_to,
                message_id=message_id,
                host=domain_of(target.rcpt_to),
                added_at=moment,
                next_delivery_at=moment,
                status=Status.SCHEDULED,
                size=raw.size,
                client_addr=envelope.client_addr,
                node=self.node,
                orig_rcpt=target.orig_rcpt,
                transport="pipe" if target.pipe else "",
                pipe=target.pipe,
            )
            for target in envelope.targets
        ]

    def _write_records(self, item: _Staged) -> None:
        for record in item.records:
            item.json_tmps.append(self.spares.write(record.to_bytes()))
        fault_point("enqueue:staged")

    # --- publishing ----------------------------------------------------------------------

    def _publish(self, staged: list[_Staged]) -> None:
        # Two rounds of fsyncs for the whole batch, the least that is safe:
        # 1. Every file (raw messages and records) reaches the disk before any of its names
        #    appears, so no name ever shows a half-written file, even after a power cut.
        self._sync_files(staged, lambda item: [item.raw.path, *item.json_tmps])
        # 2. The names: the raw file under its Uuid, then each record's link to it and the
        #    record itself by one rename, the link first in the record's own directory (a
        #    journaling file system keeps one directory's changes in order; should the
        #    link still be missing, the store's reader makes it again from the Uuid name).
        self._step(staged, self._link_raw)
        self._step(staged, self._show_records)
        # 3. Every directory that got a name, together: the ``250`` is given after this.
        #    A crash before it may leave any part of a message visible, all of it whole:
        #    its client had no ``250`` and sends it again.
        self._sync_dirs(staged, lambda item: [self.layout.message_dir(item.uuid),
                                              *([self.layout.messages] if item.made_leaf
                                                else []),
                                              *(self.layout.record_dir(r.id)
                                                for r in item.records)])
        self._notify([record for item in staged if item.error is None
                      for record in item.records])

    def _link_raw(self, item: _Staged) -> None:
        fault_point("enqueue:raw-written")
        target = self.layout.message_raw(item.uuid)
        try:
            os.rename(item.raw.path, target)
        except FileNotFoundError:
            # The leaf is made by the first message that needs it (the receiver makes all
            # of them at start-up), perhaps by another process at this very moment: its
            # entry becomes durable in the directory round. Should the temp file be what is
            # missing, the second rename says so.
            with contextlib.suppress(FileExistsError):
                os.mkdir(target.parent, 0o750)
            item.made_leaf = True
            os.rename(item.raw.path, target)

    def _show_records(self, item: _Staged) -> None:
        fault_point("enqueue:raw-linked")
        for record, tmp in zip(item.records, item.json_tmps, strict=True):
            self._ensure_dir(self.layout.record_dir(record.id))
            os.link(self.layout.message_raw(record.uuid), self.layout.record_raw(record.id))
            os.rename(tmp, self.layout.record_json(record.id))
            fault_point("enqueue:record-renamed")

    def _step(self, staged: list[_Staged], action: Callable[[_Staged], None]) -> None:
        for item in staged:
            if item.error is None:
                try:
                    action(item)
                except Exception as exc:
                    item.error = exc

    def _sync_files(self, staged: list[_Staged],
                    paths: Callable[[_Staged], list[Path]]) -> None:
        live = [item for item in staged if item.error is None]
        failed = fsutil.fsync_each(path for item in live for path in paths(item))
        _charge(live, paths, failed)

    def _sync_dirs(self, staged: list[_Staged],
                   paths: Callable[[_Staged], list[Path]]) -> None:
        live = [item for item in staged if item.error is None]
        failed = fsutil.fsync_each((path for item in live for path in paths(item)),
                                   directories=True)
        _charge(live, paths, failed)

    # --- the end of a batch --------------------------------------------------------------

    def _finish(self, staged: list[_Staged], outcomes: list[Outcome | None]) -> None:
        for item in staged:
            if item.error is None:
                outcomes[item.index] = item.records
            else:
                self._undo(item)
                outcomes[item.index] = _as_outcome(item.error)

    def _undo(self, item: _Staged) -> None:
        """Remove every file of a failed message; a record first, so none is seen torn."""
        paths = [path for record in item.records
                 for path in (self.layout.record_json(record.id),
                              self.layout.record_raw(record.id))]
        paths += [*item.json_tmps, item.raw.path, self.layout.message_raw(item.uuid)]
        for path in paths:
            _remove(path)


def _sender(envelope: Envelope, target: Target) -> str:
    """A mini-list's address for its members; a bounce (null sender) stays one, so that a
    list never turns it into mail its members' bounces would answer, round and round."""
    if target.mail_from is None or not envelope.mail_from:
        return envelope.mail_from
    return target.mail_from


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # what cannot go now, cleanup() takes later
        fsutil.unlink_quietly(path)


def _charge(live: list[_Staged], paths: Callable[[_Staged], list[Path]],
            failed: dict[Path, OSError]) -> None:
    """Fail each message one of whose paths failed (a shared directory fails them all)."""
    if failed:
        for item in live:
            errors = [failed[path] for path in paths(item) if path in failed]
            if errors:
                item.error = errors[0]


def _as_outcome(exc: Exception) -> Exception:
    """A write error becomes this message's own :class:`QueueWriteError` (errno kept)."""
    if isinstance(exc, OSError) and not isinstance(exc, QueueWriteError):
        error = QueueWriteError(exc.errno, f"cannot write to the queue: {exc}")
        error.__cause__ = exc
        return error
    return exc
