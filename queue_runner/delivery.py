"""One delivery pass, shared by the cron driver (``--once``) and the daemon.

Every attempt follows the same steps for each record: take its delivery claim (so that no
other runner touches it; the claim alone says "in delivery", nothing is written), deliver
with no lock held, then take the short mutation lock and apply the result *and* whatever an
admin marked meanwhile (discard, bounce, hold), for all the recipients of the message in one
batch. A record is read once per attempt, when it is claimed. A killed runner loses its
claims with its process; the next pass picks the records up again (at-least-once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from queue_runner.passes import PerPass, new_pass
from queue_runner.pipe import PipeTransport
from queue_runner.reports import AttemptReports
from queue_runner.results import RecipientResult, failure
from queue_runner.schedule import Schedule
from queue_runner.transports import MaildirTransport, Outgoing, SmtpTransport, Transport
from tmail.config import Config
from tmail.db import DatabaseUnavailable
from tmail.directory.lookup import Directory
from tmail.directory.routes import RouteStore
from tmail.metrics import DELIVERIES, Counters
from tmail.queue import Claim, LockedRecord, QueueStore, Record, RecordError, Status, notify
from tmail.queue.notify import Hint
from tmail.queue.record import now
from tmail.text import printable
from tmail.users import UserStore, open_store

log = logging.getLogger("queue_runner")

ADMIN_REASON = "The message was returned by the administrator."


def backoff(config: Config, failures: int) -> float:
    """Postfix's schedule: the minimal backoff, doubling per failure, capped at the maximal."""
    return min(config.retry_max_backoff, config.retry_min_backoff * 2 ** max(0, failures - 1))


class Runner:
    def __init__(self, config: Config, store: QueueStore, users: UserStore,
                 smtp: Transport, local: Transport | None = None,
                 counters: Counters | None = None, partition: tuple[int, int] = (0, 1)) -> None:
        """``partition`` (index, count): this runner delivers only the messages whose Uuid
        falls in its share, so that several runner processes split the work without
        competing for the same claims (and a message's recipients stay together)."""
        self.config = config
        self.partition = partition
        self.counters = counters or Counters(config.metrics_db)
        self.store = store
        self.users = users
        self.directory = Directory(users.database, config)
        self._local_domains = PerPass(self.directory.local_domains)
        self.smtp = smtp
        self.local = local or MaildirTransport(config, users)
        self.pipe: Transport = PipeTransport(config)
        self._pool = ThreadPoolExecutor(config.runner_concurrency, thread_name_prefix="deliver")
        self._slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(config.runner_destination_concurrency))
        self._slots_lock = threading.Lock()
        self._inflight: set[int] = set()
        self._inflight_lock = threading.Lock()
        self.schedule = Schedule()

    @classmethod
    def build(cls, config: Config, smtp: Transport | None = None,
              partition: tuple[int, int] = (0, 1)) -> Runner:
        from queue_runner.routing import DnsResolver

        users = open_store(config)
        store = QueueStore(config.queue_dir, id_block=16, node=config.node)
        if smtp is None:
            routes = RouteStore(users.database, config).for_delivery  # read at each attempt
            smtp = SmtpTransport(config, DnsResolver(), routes=routes)
        return cls(config, store, users, smtp, partition=partition)

    # --- finding work ------------------------------------------------------------------

    def owns(self, uuid: str) -> bool:
        """Whether this runner's share (``partition``) holds the message ``uuid``."""
        index, count = self.partition
        if count == 1:
            return True
        try:
            return int(uuid[:8], 16) % count == index
        except ValueError:  # not a Uuid of ours: the first worker takes it (and fails it)
            return index == 0

    def sweep(self) -> list[Future[None]]:
        """Start every due record of this runner's share and schedule the others."""
        return self.take(self.owned(self.store.iter_raw_records()))

    def owned(self, listing: Iterable[tuple[dict[str, Any], bytes]]) -> Iterator[Record]:
        """The records of this runner's share in a listing (``iter_raw_records``).

        The parsed JSON is checked for the share before a :class:`Record` is built: each
        worker walks the whole queue, but builds only its own records.
        """
        for parsed, _ in listing:
            if not self.owns(str(parsed.get("Uuid", ""))):
                continue
            try:
                yield Record.from_json(parsed)
            except RecordError:
                continue  # the store's scan checked it; a record rewritten meanwhile waits

    def take(self, records: Iterable[Record]) -> list[Future[None]]:
        """Start those of ``records`` that are due (or marked) and schedule the others; held
        records wait for their release, which hints them."""
        moment = now()
        due = []
        for record in records:
            if record.status in (Status.DISCARD, Status.BOUNCE) or (
                record.status != Status.HELD and record.next_delivery_at <= moment
            ):
                due.append(record)
            elif record.status != Status.HELD:
                self.schedule.add(record.id, record.next_delivery_at.timestamp())
        return self.submit(due)

    def take_hints(self, hints: Iterable[Hint]) -> None:
        """Schedule the hinted records of this runner's share, without reading them."""
        for hint in hints:
            if self.owns(hint.uuid):
                self.schedule.add(hint.id, hint.due)

    def submit_due(self) -> list[Future[None]]:
        """Start the scheduled records that are due now."""
        return self.submit_ids(self.schedule.pop_due())

    def submit_ids(self, ids: Iterable[int]) -> list[Future[None]]:
        """Read these records and start those that are due; schedule the others again.

        Their files are read as they are (``load``): whether another runner holds a claim
        is found by the attempt, which takes the claim and reads the record once more.
        """
        return self.take(filter(None, map(self.store.load, dict.fromkeys(ids))))

    def run_once(self) -> int:
        """Deliver everything due now and wait for it (the cron driver).

        Every hint written before this sweep is covered by it, so the notify file can be
        rotated here when it has grown: with cron alone, nobody else would.
        """
        notify.rotate_if_large(self.store.layout.notify)
        futures = self.sweep()
        for future in futures:
            future.result()
        return len(futures)

    def submit(self, records: list[Record]) -> list[Future[None]]:
        """Group records by message and destination: one SMTP transaction per group (pipe
        records by their command). The groups are one pass (``passes.py``): they share one
        read of the local domains and of the routes."""
        number = new_pass()
        groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
        with self._inflight_lock:
            for record in records:
                if record.id in self._inflight or not self.owns(record.uuid):
                    continue
                self._inflight.add(record.id)
                groups[(record.uuid, record.host, record.pipe)].append(record)
        return [self._pool.submit(self._attempt, group, number) for group in groups.values()]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.smtp.close()
        self.local.close()
        self.pipe.close()

    def close_idle(self) -> None:
        """QUIT cached SMTP sessions that have been idle too long (the daemon calls this)."""
        self.smtp.close_idle()
        self.local.close_idle()
        self.pipe.close_idle()

    # --- one attempt -------------------------------------------------------------------

    def _attempt(self, group: list[Record], number: int) -> None:
        """Claim, start, send, finish. Whatever an attempt raises is logged and the records
        come back after the minimal backoff (their claims die with the ``with``): one broken
        record never spins, and the others go on."""
        claimed: list[int] = []
        try:
            with contextlib.ExitStack() as stack:
                claims = []
                for record in sorted(group, key=lambda r: r.id):
                    claim = stack.enter_context(self.store.claimed(record.id))
                    if claim is not None:  # else another runner has it
                        claims.append(claim)
                        claimed.append(record.id)
                attempt_at = now()
                started = self._start_all(claims)
                if started:
                    results = self._send([c.record for c in started], started[0].read_raw(),
                                         number)
                    self._finish_all(started, results, attempt_at)
        except Exception:
            log.exception("%s: delivery attempt failed unexpectedly; retrying in %gs",
                          group[0].uuid, backoff(self.config, 1))
            retry_at = time.time() + backoff(self.config, 1)
            for record_id in claimed:
                self.schedule.add(record_id, retry_at)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(record.id for record in group)

    def _is_local(self, host: str, number: int) -> bool:
        """The directory's one definition: domains with ``local`` true, the domains of
        users with a mailbox, ``TMAIL_LOCAL_DOMAINS`` (read once in pass ``number``)."""
        return host in self._local_domains.get(number)

    def _send(self, started: list[Record], raw: bytes, number: int) -> list[RecipientResult]:
        """The transport's results; any exception becomes a temporary failure of them all,
        which then goes through the normal finish path (``LastError``, backoff)."""
        first = started[0]
        relay = "none"
        try:
            transport, relay, slot = self._transport(first, number)
            message = Outgoing(first.uuid, first.mail_from, raw, [r.rcpt_to for r in started],
                               auth_user=first.auth_user,
                               orig_rcpts=[r.orig_rcpt for r in started], pipe=first.pipe,
                               pass_number=number)
            with self._slot(slot):
                results = transport.send(message)
            if len(results) != len(started):
                raise RuntimeError(f"{len(results)} results for {len(started)} recipients")
            return results
        except DatabaseUnavailable as exc:  # the users' look-up: back when the database is
            log.warning("%s: deferred: %s", first.uuid, exc)
            return [failure(451, f"4.3.0 {exc}", relay)] * len(started)
        except Exception as exc:
            log.exception("%s: delivery to %s failed unexpectedly", first.uuid,
                          printable(first.host))
            reason = f"4.3.0 internal error: {type(exc).__name__}: {exc}"
            return [failure(451, reason, relay)] * len(started)

    def _transport(self, record: Record, number: int) -> tuple[Transport, str, str]:
        """The transport for ``record``, its relay name for errors, and its slot: the
        record's own Transport (a pipe, one slot per command), else local or remote by
        its domain (one slot per domain)."""
        if record.transport == "pipe":
            return self.pipe, "pipe", f"pipe {record.pipe}"
        if self._is_local(record.host, number):
            return self.local, "local", "local"
        return self.smtp, "none", record.host

    def _reports(self) -> AttemptReports:
        return AttemptReports(self.store, self.config, self.counters, self._log)

    def _slot(self, destination: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            return self._slots[destination]

    @contextlib.contextmanager
    def _all_locked(self, claims: list[Claim]) -> Iterator[list[LockedRecord]]:
        """The mutation locks of several claimed records of one message, in ``Id`` order,
        with one batch for their changes, committed before the locks are released.

        Only a runner ever holds more than one mutation lock, and only for records whose
        delivery claims it holds already, so no two holders of several locks can meet.
        """
        batch = self.store.batch()
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(claim.locked(batch))
                    for claim in sorted(claims, key=lambda c: c.id)]
            try:
                yield [locked for locked in held if locked is not None]
            finally:
                batch.commit()

    def _start_all(self, claims: list[Claim]) -> list[Claim]:
        """The claims to deliver now. Nothing is written for those: the claim says "in
        delivery". Marks left over (discard, bounce) and expiry are applied under the
        mutation locks, re-reading the record if an admin changed it meanwhile."""
        started, to_act = [], []
        moment = now()
        for claim in claims:
            verdict = self._verdict(claim.record, moment)
            if verdict == "deliver":
                started.append(claim)
            elif verdict == "act":
                to_act.append(claim)
        if to_act:
            by_id = {claim.id: claim for claim in to_act}
            with self._all_locked(to_act) as held:
                reports = self._reports()
                for locked in held:
                    if self._start(locked, reports):
                        started.append(by_id[locked.record.id])
                reports.send()
        return sorted(started, key=lambda c: c.id)

    def _verdict(self, record: Record, moment: datetime) -> str:
        """What the start of an attempt does with ``record``: "deliver", "skip" (held, or
        rescheduled meanwhile) or "act" (a mark or expiry to apply under the lock)."""
        if record.status == Status.HELD:
            return "skip"
        if record.status in (Status.DISCARD, Status.BOUNCE):
            return "act"
        if record.next_delivery_at > moment:
            self.schedule.add(record.id, record.next_delivery_at.timestamp())  # rescheduled
            return "skip"
        if record.age_seconds(moment) >= self.config.max_queue_lifetime:
            return "act"
        return "deliver"

    def _start(self, locked: LockedRecord, reports: AttemptReports) -> bool:
        """Under the mutation lock: apply a mark or expire; whether to deliver after all."""
        record = locked.record
        verdict = self._verdict(record, now())
        if verdict != "act":
            return verdict == "deliver"
        if record.status == Status.DISCARD:
            self._discard(locked)
        elif record.status == Status.BOUNCE:
            reports.fail(locked, ADMIN_RESULT, ADMIN_REASON)
        else:
            self._expire(locked, reports)
        return False

    def _finish_all(self, started: list[Claim], results: list[RecipientResult],
                    attempt_at: datetime) -> None:
        """Under the mutation locks again: each result, unless an admin's mark says otherwise;
        one DSN for every recipient that failed in this attempt (and one for those delayed);
        one batch of changes for them all."""
        by_id = {claim.id: result for claim, result in zip(started, results, strict=True)}
        with self._all_locked(started) as held:
            reports = self._reports()
            for locked in held:
                self._finish(locked, by_id[locked.record.id], reports, attempt_at)
            reports.send()

    def _finish(self, locked: LockedRecord, result: RecipientResult,
                reports: AttemptReports, attempt_at: datetime) -> None:
        current = locked.record
        if result.sent:
            self._log(current, result)
            locked.remove()
        elif current.status == Status.DISCARD:
            self._discard(locked)
        elif current.status == Status.BOUNCE:
            reports.fail(locked, ADMIN_RESULT, ADMIN_REASON)
        elif result.permanent:
            reports.fail(locked, result, "The remote server refused the message.")
        else:
            self._defer(locked, result, reports, attempt_at)

    # --- outcomes ----------------------------------------------------------------------

    def _defer(self, locked: LockedRecord, result: RecipientResult,
               reports: AttemptReports, attempt_at: datetime) -> None:
        record = locked.record.evolve(last_attempt_at=attempt_at)
        if record.age_seconds() >= self.config.max_queue_lifetime and (
            record.status != Status.HELD
        ):
            locked.write(record.evolve(last_error=result.reply))  # for the DSN
            self._expire(locked, reports)
            return
        failures = record.delivery_failed_count + 1
        updated = record.evolve(
            status=Status.HELD if record.status == Status.HELD else Status.SCHEDULED,
            delivery_failed_count=failures,
            last_error=result.reply,
            next_delivery_at=now() + timedelta(seconds=backoff(self.config, failures)),
        )
        self._log(updated, result)
        if self._should_warn(updated):
            reports.delay(locked, updated.evolve(delay_warned=True), result)
        else:
            locked.write(updated)
        if updated.status == Status.SCHEDULED:
            self.schedule.add(updated.id, updated.next_delivery_at.timestamp())

    def _should_warn(self, record: Record) -> bool:
        return bool(
            self.config.delay_warning
            and not record.delay_warned
            and record.mail_from
            and record.age_seconds() >= self.config.delay_warning
        )

    def _expire(self, locked: LockedRecord, reports: AttemptReports) -> None:
        detail = locked.record.last_error or "no attempt succeeded"
        result = RecipientResult(451, f"4.4.7 delivery time expired ({detail})")
        reports.fail(locked, result, "Delivery time expired: the message could not be "
                                     "delivered in time.")

    def _discard(self, locked: LockedRecord) -> None:
        log.info("%s: to=<%s>, status=discarded (by the administrator)", locked.record.uuid,
                 printable(locked.record.rcpt_to))
        locked.remove()

    def _log(self, record: Record, result: RecipientResult) -> None:
        """The Postfix-style log line of one attempt, and the attempt's counter."""
        transport = result.relay if result.relay in ("local", "pipe") else "smtp"
        self.counters.inc(DELIVERIES, result=result.outcome, transport=transport)
        log.info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)", record.uuid,
                 printable(record.rcpt_to), printable(result.relay), record.age_seconds(),
                 result.status, result.outcome, result.reply)


ADMIN_RESULT = RecipientResult(550, "5.0.0 returned by the administrator")
