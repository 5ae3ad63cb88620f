"""One delivery pass, shared by the cron driver (``--once``) and the daemon.

Every attempt follows the same steps for each record: take its delivery claim (so that no
other runner touches it), mark it in delivery under the short mutation lock, deliver with no
lock held, then take the mutation lock again and apply the result *and* whatever an admin
marked meanwhile (discard, bounce, hold). A killed runner loses its claims with its process;
the next pass picks the records up again (at-least-once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from queue_runner.results import RecipientResult
from queue_runner.transports import MaildirTransport, Outgoing, SmtpTransport, Transport
from tmail.config import Config
from tmail.dsn import RecipientStatus
from tmail.metrics import DELIVERIES, Counters
from tmail.queue import LockedRecord, QueueStore, Record, Status
from tmail.queue.ops import bounce_now, queue_dsn
from tmail.queue.record import now
from tmail.users import UserStore

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
        self.smtp = smtp
        self.local = local or MaildirTransport(config, users)
        self._pool = ThreadPoolExecutor(config.runner_concurrency, thread_name_prefix="deliver")
        self._slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(config.runner_destination_concurrency))
        self._slots_lock = threading.Lock()
        self._inflight: set[int] = set()
        self._inflight_lock = threading.Lock()

    @classmethod
    def build(cls, config: Config, smtp: Transport | None = None,
              partition: tuple[int, int] = (0, 1)) -> Runner:
        from queue_runner.routing import DnsResolver

        users = UserStore(config.users_db, config.mailboxes_dir, config.default_quota)
        store = QueueStore(config.queue_dir, id_block=16)
        return cls(config, store, users, smtp or SmtpTransport(config, DnsResolver()),
                   partition=partition)

    # --- finding work ------------------------------------------------------------------

    def sweep(self) -> tuple[list[Future[None]], datetime | None]:
        """Start every due record; returns the attempts and the next future due time."""
        moment = now()
        due: list[Record] = []
        next_due: datetime | None = None
        for record in self.store.iter_records():
            if record.status == Status.HELD:
                continue
            if record.status in (Status.DISCARD, Status.BOUNCE) or (
                record.next_delivery_at <= moment
            ):
                due.append(record)
            elif next_due is None or record.next_delivery_at < next_due:
                next_due = record.next_delivery_at
        return self.submit(due), next_due

    def submit_ids(self, ids: Iterable[int]) -> list[Future[None]]:
        records = [r for r in map(self.store.get, dict.fromkeys(ids)) if r is not None]
        return self.submit([r for r in records if r.next_delivery_at <= now()
                            or r.status in (Status.DISCARD, Status.BOUNCE)])

    def run_once(self) -> int:
        """Deliver everything due now and wait for it (the cron driver)."""
        futures, _ = self.sweep()
        for future in futures:
            future.result()
        return len(futures)

    def submit(self, records: list[Record]) -> list[Future[None]]:
        """Group records by message and destination: one SMTP transaction per group."""
        groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
        index, count = self.partition
        with self._inflight_lock:
            for record in records:
                if record.id in self._inflight or (
                    count > 1 and int(record.uuid[:8], 16) % count != index
                ):
                    continue
                self._inflight.add(record.id)
                groups[(record.uuid, record.host)].append(record)
        return [self._pool.submit(self._attempt, group) for group in groups.values()]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.smtp.close()
        self.local.close()

    def close_idle(self) -> None:
        """QUIT cached SMTP sessions that have been idle too long (the daemon calls this)."""
        self.smtp.close_idle()
        self.local.close_idle()

    # --- one attempt -------------------------------------------------------------------

    def _attempt(self, group: list[Record]) -> None:
        try:
            with contextlib.ExitStack() as claims:
                started: list[tuple[Record, int]] = []
                for record in group:
                    fd = claims.enter_context(self.store.claimed(record.id))
                    if fd is None:
                        continue  # another runner has it
                    current = self._start(record.id)
                    if current is not None:
                        started.append((current, fd))
                if started:
                    self._deliver(started)
        except Exception:
            log.exception("delivery attempt for %s failed unexpectedly", group[0].uuid)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(record.id for record in group)

    def _is_local(self, host: str) -> bool:
        return host in self.config.local_domains or host in self.users.local_domains()

    def _deliver(self, started: list[tuple[Record, int]]) -> None:
        first, fd = started[0]
        raw = os.pread(fd, os.fstat(fd).st_size, 0)
        local = self._is_local(first.host)
        transport = self.local if local else self.smtp
        message = Outgoing(first.uuid, first.mail_from, raw, [r.rcpt_to for r, _ in started])
        slot = self._slot("local" if local else first.host)
        with slot:
            results = transport.send(message)
        for (record, _), result in zip(started, results, strict=True):
            self._finish(record, result)

    def _slot(self, destination: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            return self._slots[destination]

    def _start(self, record_id: int) -> Record | None:
        """Under the mutation lock: apply marks left over, expire, or mark in delivery."""
        with self.store.locked(record_id) as locked:
            if locked is None:
                return None
            record = locked.record
            if record.status == Status.HELD:
                return None
            if record.status == Status.DISCARD:
                self._discard(locked)
                return None
            if record.status == Status.BOUNCE:
                self._bounce(locked, RecipientResult(550, "5.0.0 returned by the administrator"),
                             ADMIN_REASON)
                return None
            if record.status == Status.SCHEDULED and record.next_delivery_at > now():
                return None  # rescheduled since we looked
            if record.age_seconds() >= self.config.max_queue_lifetime:
                self._expire(locked)
                return None
            return locked.write(record.evolve(status=Status.IN_DELIVERY, last_attempt_at=now()))

    def _finish(self, record: Record, result: RecipientResult) -> None:
        """Under the mutation lock again: the result, unless an admin's mark says otherwise."""
        with self.store.locked(record.id) as locked:
            if locked is None:
                return
            current = locked.record
            if result.sent:
                self._log(current, result)
                locked.remove()
            elif current.status == Status.DISCARD:
                self._discard(locked)
            elif current.status == Status.BOUNCE:
                self._bounce(locked, RecipientResult(550, "5.0.0 returned by the administrator"),
                             ADMIN_REASON)
            elif result.permanent:
                self._bounce(locked, result, "The remote server refused the message.")
            else:
                self._defer(locked, result)

    # --- outcomes ----------------------------------------------------------------------

    def _defer(self, locked: LockedRecord, result: RecipientResult) -> None:
        record = locked.record
        if record.age_seconds() >= self.config.max_queue_lifetime and (
            record.status != Status.HELD
        ):
            locked.write(record.evolve(last_error=result.reply))
            self._expire(locked)
            return
        failures = record.delivery_failed_count + 1
        updated = record.evolve(
            status=Status.HELD if record.status == Status.HELD else Status.SCHEDULED,
            delivery_failed_count=failures,
            last_error=result.reply,
            next_delivery_at=now() + timedelta(seconds=backoff(self.config, failures)),
        )
        if self._should_warn(updated):
            self._warn(locked, updated, result)
            updated = updated.evolve(delay_warned=True)
        locked.write(updated)
        self._log(updated, result)

    def _should_warn(self, record: Record) -> bool:
        return bool(
            self.config.delay_warning
            and not record.delay_warned
            and record.mail_from
            and record.age_seconds() >= self.config.delay_warning
        )

    def _warn(self, locked: LockedRecord, record: Record, result: RecipientResult) -> None:
        until = record.added_at + timedelta(seconds=self.config.max_queue_lifetime)
        queue_dsn(
            self.store,
            original=locked.read_raw(),
            record=record,
            recipients=[RecipientStatus(record.rcpt_to, "delayed", result.status,
                                        f"smtp; {result.reply}", _remote(result), until)],
            hostname=self.config.hostname,
            reason="The mail system will keep trying to deliver your message.",
            delay_hours=round(record.age_seconds() / 3600, 1),
            lifetime_hours=round(self.config.max_queue_lifetime / 3600, 1),
            counters=self.counters,
        )

    def _expire(self, locked: LockedRecord) -> None:
        record = locked.record
        detail = record.last_error or "no attempt succeeded"
        result = RecipientResult(451, f"4.4.7 delivery time expired ({detail})")
        self._bounce(locked, result, "Delivery time expired: the message could not be "
                                     "delivered in time.")

    def _bounce(self, locked: LockedRecord, result: RecipientResult, reason: str) -> None:
        record = locked.record
        self._log(record, RecipientResult(max(result.code, 500), result.text, result.relay))
        bounce_now(self.store, locked, hostname=self.config.hostname, reason=reason,
                   status=result.status, diagnostic=f"smtp; {result.reply}",
                   remote_mta=_remote(result), counters=self.counters)

    def _discard(self, locked: LockedRecord) -> None:
        log.info("%s: to=<%s>, status=discarded (by the administrator)", locked.record.uuid,
                 locked.record.rcpt_to)
        locked.remove()

    def _log(self, record: Record, result: RecipientResult) -> None:
        """The Postfix-style log line of one attempt, and the attempt's counter."""
        self.counters.inc(DELIVERIES, result=result.outcome,
                          transport="local" if result.relay == "local" else "smtp")
        log.info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)", record.uuid,
                 record.rcpt_to, result.relay, record.age_seconds(), result.status,
                 result.outcome, result.reply)


def _remote(result: RecipientResult) -> str:
    if result.relay in ("none", "local"):
        return ""
    return f"dns; {result.relay.rpartition(':')[0].strip('[]')}"
