"""What an admin does to queued mail: discard, bounce, hold, release, retry; one or in bulk.

The API and the ops CLI call these same functions. Each takes the record's mutation lock. A
record that a runner is delivering right now is not changed under its feet: it is *marked*
(status 1 discard, 3 bounce, 4 hold) and the runner applies the mark when the attempt ends,
unless the attempt delivered it. The DSN helpers here are also the runner's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from tmail.dsn import RecipientStatus, build_dsn
from tmail.metrics import DSNS, Counters
from tmail.queue.changes import LockedRecord
from tmail.queue.filters import RecordFilter
from tmail.queue.record import Record, Status, now
from tmail.queue.store import QueueStore

log = logging.getLogger(__name__)

ADMIN_BOUNCE_REASON = "The message was returned by the administrator."
BULK_ACTIONS = ("discard", "bounce", "hold", "release", "retry")


class Outcome(Enum):
    DONE = "done"  # applied now
    MARKED = "marked"  # in delivery: the runner applies it when the attempt ends
    NOT_APPLICABLE = "not applicable"  # e.g. release of a record that is not held
    NOT_FOUND = "not found"


@dataclass(frozen=True)
class BulkResult:
    matched: int
    done: int
    skipped: int


def queue_dsn(
    store: QueueStore,
    *,
    original: bytes,
    record: Record,
    recipients: Sequence[RecipientStatus],
    hostname: str,
    reason: str,
    delay_hours: float = 0.0,
    lifetime_hours: float = 0.0,
    counters: Counters | None = None,
) -> Record | None:
    """Queue a DSN about ``record``'s message to its sender; never to the null sender.

    Returns the DSN's first record, or ``None`` when no DSN may be sent.
    """
    if record.mail_from == "":
        log.info(
            "%s: no DSN for a message from the null sender (to=<%s>): %s",
            record.uuid, record.rcpt_to, reason,
        )
        return None
    dsn = build_dsn(
        original=original,
        mail_from=record.mail_from,
        queue_id=record.uuid,
        arrival=record.added_at,
        recipients=recipients,
        reporting_host=hostname,
        reason=reason,
        delay_hours=delay_hours,
        lifetime_hours=lifetime_hours,
    )
    queued = store.enqueue(dsn, "", [record.mail_from], client_addr="local")[0]
    if counters is not None:
        counters.inc(DSNS, action=recipients[0].action)
    log.info("%s: sender DSN queued as %s (%s)", record.uuid, queued.uuid,
             recipients[0].action)
    return queued


def bounce_now(
    store: QueueStore,
    locked: LockedRecord,
    *,
    hostname: str,
    reason: str,
    status: str = "5.0.0",
    diagnostic: str = "",
    remote_mta: str = "",
    counters: Counters | None = None,
) -> None:
    """Send the sender a "failed" DSN for this record, then remove it (DSN first: a crash in
    between may bounce twice, never lose the bounce)."""
    record = locked.record
    queue_dsn(
        store,
        original=locked.read_raw(),
        record=record,
        recipients=[RecipientStatus(record.rcpt_to, "failed", status, diagnostic, remote_mta,
                                    original_rcpt=record.orig_rcpt)],
        hostname=hostname,
        reason=reason,
        counters=counters,
    )
    locked.remove()


class QueueOps:
    """The admin operations on one store (the API builds one, the CLI builds one)."""

    def __init__(self, store: QueueStore, hostname: str,
                 counters: Counters | None = None) -> None:
        self.store = store
        self.hostname = hostname
        self.counters = counters

    def discard(self, record_id: int) -> Outcome:
        with self.store.locked(record_id) as locked:
            if locked is None:
                return Outcome.NOT_FOUND
            if locked.in_delivery:
                locked.write(locked.record.evolve(status=Status.DISCARD))
                return Outcome.MARKED
            locked.remove()
            log.info("%s: to=<%s> discarded by the administrator", locked.record.uuid,
                     locked.record.rcpt_to)
            return Outcome.DONE

    def bounce(self, record_id: int, reason: str = ADMIN_BOUNCE_REASON) -> Outcome:
        with self.store.locked(record_id) as locked:
            if locked is None:
                return Outcome.NOT_FOUND
            if locked.in_delivery:
                locked.write(locked.record.evolve(status=Status.BOUNCE))
                return Outcome.MARKED
            bounce_now(self.store, locked, hostname=self.hostname, reason=reason,
                       diagnostic="x-tmail; returned by the administrator",
                       counters=self.counters)
            return Outcome.DONE

    def hold(self, record_id: int) -> Outcome:
        with self.store.locked(record_id) as locked:
            if locked is None:
                return Outcome.NOT_FOUND
            if locked.record.status in (Status.HELD, Status.DISCARD, Status.BOUNCE):
                return Outcome.NOT_APPLICABLE
            locked.write(locked.record.evolve(status=Status.HELD))
            return Outcome.MARKED if locked.in_delivery else Outcome.DONE

    def release(self, record_id: int) -> Outcome:
        with self.store.locked(record_id) as locked:
            if locked is None:
                return Outcome.NOT_FOUND
            if locked.record.status != Status.HELD:
                return Outcome.NOT_APPLICABLE
            if locked.in_delivery:
                # Held during an attempt that is still running: just take the mark back.
                locked.write(locked.record.evolve(status=Status.SCHEDULED))
                return Outcome.DONE
            locked.write(locked.record.evolve(status=Status.SCHEDULED, next_delivery_at=now()))
        self.store.wake([record_id])
        return Outcome.DONE

    def retry(self, record_id: int) -> Outcome:
        with self.store.locked(record_id) as locked:
            if locked is None:
                return Outcome.NOT_FOUND
            if locked.in_delivery or locked.record.status != Status.SCHEDULED:
                return Outcome.NOT_APPLICABLE
            locked.write(locked.record.evolve(status=Status.SCHEDULED, next_delivery_at=now()))
        self.store.wake([record_id])
        return Outcome.DONE

    def get(self, record_id: int) -> Record | None:
        return self.store.get(record_id)

    def bulk(self, action: str, record_filter: RecordFilter) -> BulkResult:
        """Apply ``action`` (discard, bounce, hold, release, retry) to every matching record.

        Records are collected first (ids only) so that records the action creates (DSNs)
        are never visited.
        """
        if action not in BULK_ACTIONS:
            raise ValueError(f"unknown bulk action {action!r}")
        operation: Callable[[int], Outcome] = getattr(self, action)
        ids = [data["Id"] for data, _ in self.store.iter_raw_records(record_filter)]
        done = sum(operation(record_id) in (Outcome.DONE, Outcome.MARKED) for record_id in ids)
        log.info("bulk %s: %d matched, %d done", action, len(ids), done)
        return BulkResult(matched=len(ids), done=done, skipped=len(ids) - done)
