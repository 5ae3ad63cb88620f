"""The DSNs of one delivery attempt (RFC 3464): what the runner owes the sender.

Postfix sends one bounce per message and attempt, listing every recipient that failed in
it, not one per recipient: a message to 100 unknown users gives the sender one DSN, not 100.
The runner collects the failed and delayed recipients of an attempt here while it holds
their mutation locks, then :meth:`AttemptReports.send` queues the DSNs and only then removes
or rewrites the records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta

from queue_runner.results import RecipientResult
from tmail.config import Config
from tmail.dsn import RecipientStatus
from tmail.metrics import Counters
from tmail.queue import LockedRecord, QueueStore, Record
from tmail.queue.ops import queue_dsn


class AttemptReports:
    """The DSNs of one attempt: one "failed" DSN listing every recipient that failed in it,
    and one "delayed" DSN for those past the delay warning (not one per recipient).

    Records are changed only after their DSN is queued (a crash in between may send a DSN
    twice, never lose one), while the caller still holds their mutation locks.
    """

    def __init__(self, store: QueueStore, config: Config, counters: Counters,
                 log_result: Callable[[Record, RecipientResult], None]) -> None:
        self.store, self.config, self.counters = store, config, counters
        self.log_result = log_result
        self.failed: list[tuple[LockedRecord, RecipientResult, str]] = []
        self.delayed: list[tuple[LockedRecord, Record, RecipientResult]] = []

    def fail(self, locked: LockedRecord, result: RecipientResult, reason: str) -> None:
        self.log_result(locked.record,
                        RecipientResult(max(result.code, 500), result.text, result.relay))
        self.failed.append((locked, result, reason))

    def delay(self, locked: LockedRecord, updated: Record, result: RecipientResult) -> None:
        self.delayed.append((locked, updated, result))

    def send(self) -> None:
        config = self.config
        if self.failed:
            self._queue([RecipientStatus(locked.record.rcpt_to, "failed", result.status,
                                         result.diagnostic, _remote(result),
                                         original_rcpt=locked.record.orig_rcpt)
                         for locked, result, _ in self.failed],
                        self.failed[0][0], _reasons(reason for _, _, reason in self.failed))
            for locked, _, _ in self.failed:
                locked.remove()
        if self.delayed:
            first = self.delayed[0][1]
            until = first.added_at + timedelta(seconds=config.max_queue_lifetime)
            self._queue([RecipientStatus(updated.rcpt_to, "delayed", result.status,
                                         result.diagnostic, _remote(result), until,
                                         updated.orig_rcpt)
                         for _, updated, result in self.delayed],
                        self.delayed[0][0],
                        "The mail system will keep trying to deliver your message.",
                        delay_hours=round(first.age_seconds() / 3600, 1),
                        lifetime_hours=round(config.max_queue_lifetime / 3600, 1))
            for locked, updated, _ in self.delayed:
                locked.write(updated)

    def _queue(self, recipients: list[RecipientStatus], about: LockedRecord, reason: str,
               **hours: float) -> None:
        queue_dsn(self.store, original=about.read_raw(), record=about.record,
                  recipients=recipients, hostname=self.config.hostname, reason=reason,
                  counters=self.counters, **hours)


def _reasons(reasons: Iterable[str]) -> str:
    return "\n\n".join(dict.fromkeys(reasons))


def _remote(result: RecipientResult) -> str:
    if result.relay in ("none", "local", "pipe"):
        return ""
    return f"dns; {result.relay.rpartition(':')[0].strip('[]')}"
