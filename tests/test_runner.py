"""The queue runner: local and remote delivery, retries, bounces, marks, drivers, crashes."""

from __future__ import annotations

import dataclasses
import email
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import update

from queue_runner.delivery import Runner, backoff
from queue_runner.routing import (
    NoRecords,
    NoSuchDomain,
    RoutingError,
    destination,
)
from queue_runner.transports import SmtpTransport
from tests.conftest import REPO, child_pids, stop, tmail_env, wait_until
from tests.sink import Script, Sink
from tmail import config as tmail_config
from tmail.config import Config, HostPort
from tmail.directory.routes import bootstrap
from tmail.queue import QueueStore, Record, Status
from tmail.queue.ops import QueueOps
from tmail.queue.record import now
from tmail.users import UserStore, open_store
from tmail.users_table import users as users_table

LOCAL = "local.test"


def message(n: int | str = 1, size: int = 0) -> bytes:
    return (f"From: s@sender.test\r\nMessage-ID: <m{n}@sender.test>\r\nSubject: {n}\r\n\r\n"
            .encode() + b"x" * size + b"body\r\n")


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, sink: Sink) -> dict[str, str]:
    return tmail_env(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_RETRY_MIN_BACKOFF="1",
                     TMAIL_RETRY_MAX_BACKOFF="4", TMAIL_RUNNER_TIMEOUT="5",
                     TMAIL_RUNNER_SWEEP_INTERVAL="30", TMAIL_LOCAL_DOMAINS=LOCAL)


@pytest.fixture
def config(env: dict[str, str]) -> Config:
    return tmail_config.load(env)


@pytest.fixture
def store(config: Config) -> QueueStore:
    return QueueStore(config.queue_dir)


@pytest.fixture
def users(config: Config) -> UserStore:
    return open_store(config)


@pytest.fixture
def runner(config: Config) -> Iterator[Runner]:
    built = Runner.build(config)
    yield built
    built.shutdown()


def dsns(store: QueueStore) -> list[email.message.EmailMessage]:
    found = []
    for record in store.iter_records(None):
        if record.mail_from == "":
            found.append(email.message_from_bytes(store.read_raw(record.id),
                                                  policy=policy.default))
    return found


def report(dsn: email.message.EmailMessage) -> list:  # type: ignore[type-arg]
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return part.get_payload()


def test_local_delivery_into_the_maildir(runner: Runner, store: QueueStore,
                                         users: UserStore) -> None:
    user = users.create(f"bob@{LOCAL}", "password1", have_mailbox=True)
    store.enqueue(message(), "s@sender.test", [f"bob@{LOCAL}"])
    assert runner.run_once() == 1
    [delivered] = list((user.maildir / "new").iterdir())
    content = delivered.read_bytes()
    assert content.startswith(f"Return-Path: <s@sender.test>\nDelivered-To: bob@{LOCAL}\n"
                              .encode())
    assert content.endswith(b"Subject: 1\n\nbody\n") and b"\r\n" not in content
    assert list(store.iter_ids()) == []


def test_over_quota_is_a_temporary_failure_until_the_quota_grows(
    runner: Runner, store: QueueStore, users: UserStore
) -> None:
    user = users.create(f"full@{LOCAL}", "password1", have_mailbox=True, mailbox_quota="1K")
    [record] = store.enqueue(message(size=2000), "s@sender.test", [f"full@{LOCAL}"])
    runner.run_once()
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED and deferred.delivery_failed_count == 1
    assert deferred.last_error.startswith("452 4.2.2")
    with users.database.begin() as conn:
        conn.execute(update(users_table).where(users_table.c.login == user.login)
                     .values(mailbox_quota="1M"))
    with store.locked(record.id) as locked:
        locked.write(locked.record.evolve(next_delivery_at=now()))
    runner.run_once()
    assert store.get(record.id) is None and len(list((user.maildir / "new").iterdir())) == 1


def test_deleted_local_user_bounces_with_5_1_1(runner: Runner, store: QueueStore,
                                                 users: UserStore) -> None:
    users.create(f"gone@{LOCAL}", "password1", have_mailbox=True)
    store.enqueue(message(), "s@sender.test", [f"gone@{LOCAL}"])
    users.delete(f"gone@{LOCAL}")
    runner.run_once()
    [dsn] = dsns(store)
    assert dsn["To"] == "s@sender.test" and dsn.get_param("report-type") == "delivery-status"
    recipient = report(dsn)[1]
    assert (recipient["Action"], recipient["Status"]) == ("failed", "5.1.1")


def test_one_transaction_per_message_and_domain_with_mixed_outcomes(
    runner: Runner, store: QueueStore, sink: Sink
) -> None:
    sink.handler.script = Script(rcpt={"no@remote.test": "550 5.1.1 no such user",
                                       "later@remote.test": "451 4.3.0 try later"})
    records = store.enqueue(message(), "s@sender.test",
                            ["ok@remote.test", "no@remote.test", "later@remote.test",
                             "ok2@remote.test"])
    runner.run_once()
    [received] = sink.messages
    assert received.rcpt_tos == ["ok@remote.test", "ok2@remote.test"]
    assert received.content.endswith(b"Subject: 1\r\n\r\nbody\r\n")
    assert store.get(records[0].id) is None and store.get(records[3].id) is None
    later = store.get(records[2].id)
    assert later.delivery_failed_count == 1 and later.last_error == "451 4.3.0 try later"
    [dsn] = dsns(store)
    recipient = report(dsn)[1]
    assert recipient["Final-Recipient"] == "rfc822; no@remote.test"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert recipient["Remote-MTA"] == "dns; 127.0.0.1"


def test_sessions_are_reused_for_the_next_message_to_the_same_host(
    runner: Runner, store: QueueStore, sink: Sink
) -> None:
    for n in range(3):
        store.enqueue(message(n), "s@sender.test", [f"r{n}@remote.test"])
        runner.run_once()
    assert len(sink.messages) == 3
    assert {m.session for m in sink.messages} == {1} and sink.handler.sessions == 1


def test_a_session_the_server_dropped_is_replaced_without_a_failure(config: Config,
                                                                    store: QueueStore) -> None:
    with Sink(idle_timeout=0.3) as impatient:
        runner = Runner.build(dataclasses.replace(
            config, routes=(("*", HostPort("127.0.0.1", impatient.port)),)))
        try:
            store.enqueue(message(1), "s@sender.test", ["a@remote.test"])
            runner.run_once()
            time.sleep(0.8)  # the server has closed the cached session by now
            [record] = store.enqueue(message(2), "s@sender.test", ["b@remote.test"])
            runner.run_once()
        finally:
            runner.shutdown()
        assert [m.rcpt_tos for m in impatient.messages] == [["a@remote.test"], ["b@remote.test"]]
        assert impatient.handler.sessions == 2 and store.get(record.id) is None


def test_retries_follow_the_doubling_backoff(runner: Runner, store: QueueStore, sink: Sink,
                                            config: Config) -> None:
    """Each deferral schedules the next attempt one backoff after it (read from the record,
    not from the clock of a loaded machine), and nothing is attempted before that."""
    assert [backoff(config, n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    sink.handler.script = Script(data="451 4.3.0 busy")
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    delays = []
    for failures in (1, 2, 3):
        assert runner.run_once() == 1
        deferred = store.get(record.id)
        assert deferred.delivery_failed_count == failures
        delays.append((deferred.next_delivery_at - deferred.last_attempt_at).total_seconds())
        if deferred.next_delivery_at > now() + timedelta(seconds=0.2):
            assert runner.run_once() == 0  # not yet due
        assert wait_until(lambda: store.get(record.id).next_delivery_at <= now(), 10, 0.01)
    assert all(b <= d < b + 0.9 for b, d in zip((1, 2, 4), delays, strict=True)), delays


def test_expired_record_bounces_as_4_4_7(runner: Runner, store: QueueStore,
                                         config: Config) -> None:
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    with store.locked(record.id) as locked:
        old = now() - timedelta(seconds=config.max_queue_lifetime + 10)
        locked.write(locked.record.evolve(added_at=old, last_error="451 4.3.0 busy"))
    runner.run_once()
    assert store.get(record.id) is None
    recipient = report(dsns(store)[0])[1]
    assert recipient["Status"] == "4.4.7" and "busy" in recipient["Diagnostic-Code"]


def test_no_dsn_for_the_null_sender(runner: Runner, store: QueueStore, sink: Sink) -> None:
    sink.handler.script = Script(data="554 5.7.1 rejected")
    store.enqueue(message(), "", ["r@remote.test"])
    runner.run_once()
    assert list(store.iter_ids()) == []


def test_a_record_whose_link_an_enqueue_crash_lost_is_still_delivered(
    runner: Runner, store: QueueStore, sink: Sink
) -> None:
    """A crash between the raw file's rename and a record's hard link leaves the record
    without its ``.eml``: the runner makes the link again when it claims the record."""
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    store.layout.record_raw(record.id).unlink()
    assert runner.run_once() == 1
    assert len(sink.messages) == 1 and list(store.iter_ids()) == []


def test_one_delay_warning(tmp_path: Path, sink: Sink) -> None:
    env = tmail_env(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_RETRY_MIN_BACKOFF="0",
                    TMAIL_RETRY_MAX_BACKOFF="0", TMAIL_DELAY_WARNING="1")
    config = tmail_config.load(env)
    runner, store = Runner.build(config), QueueStore(config.queue_dir)
    sink.handler.script = Script(data="451 4.3.0 busy")
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    with store.locked(record.id) as locked:
        locked.write(locked.record.evolve(added_at=now() - timedelta(seconds=5)))
    for _ in range(3):
        runner.run_once()
    runner.shutdown()
    warnings = [d for d in dsns(store) if report(d)[1]["Action"] == "delayed"]
    assert len(warnings) == 1 and store.get(record.id).delay_warned
    assert "Will-Retry-Until" in report(warnings[0])[1]


@pytest.mark.parametrize(("action", "delivered"), [("discard", False), ("bounce", False),
                                                   ("hold", False), ("discard", True)])
def test_admin_action_during_an_attempt_is_applied_after_it(
    runner: Runner, store: QueueStore, sink: Sink, config: Config, action: str, delivered: bool
) -> None:
    sink.handler.script = Script(data="250 2.0.0 ok" if delivered else "451 4.3.0 busy",
                                 delay=0.6)
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    attempt = threading.Thread(target=runner.run_once)
    attempt.start()
    assert wait_until(lambda: store.get(record.id).status == Status.IN_DELIVERY, 5, 0.01)
    getattr(QueueOps(store, config.hostname), action)(record.id)
    attempt.join()
    after = store.get(record.id)
    if delivered or action != "hold":
        assert after is None  # delivered wins over any mark; otherwise the mark is applied
    else:
        assert after.status == Status.HELD and after.delivery_failed_count == 1
    bounced = [d for d in dsns(store) if report(d)[1]["Action"] == "failed"]
    assert len(bounced) == (1 if action == "bounce" and not delivered else 0)
    assert len(sink.messages) == (1 if delivered else 0)


def test_a_delivery_in_progress_writes_nothing_and_its_outcome_is_written_once(
    runner: Runner, store: QueueStore, sink: Sink
) -> None:
    """Status 0 comes from the claim: the files keep the scheduled state during the attempt;
    the deferral then writes every recipient of the message, LastAttemptAt included."""
    sink.handler.script = Script(data="451 4.3.0 busy", delay=0.6)
    records = store.enqueue(message(), "s@sender.test", [f"r{n}@remote.test" for n in range(3)])
    files = [store.layout.record_json(r.id) for r in records]
    before = [path.read_bytes() for path in files]
    started = now()
    attempt = threading.Thread(target=runner.run_once)
    attempt.start()
    assert wait_until(lambda: all(store.get(r.id).status == Status.IN_DELIVERY
                                  for r in records), 5, 0.01)
    assert [path.read_bytes() for path in files] == before
    attempt.join()
    after = [store.get(r.id) for r in records]
    assert {r.status for r in after} == {Status.SCHEDULED}
    assert {r.delivery_failed_count for r in after} == {1}
    assert len({r.last_attempt_at for r in after}) == 1
    assert started <= after[0].last_attempt_at <= now()
    assert all(r.last_error == "451 4.3.0 busy" for r in after)


def test_held_records_are_neither_delivered_nor_expired(runner: Runner, store: QueueStore,
                                                        sink: Sink, config: Config) -> None:
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    QueueOps(store, config.hostname).hold(record.id)
    with store.locked(record.id) as locked:
        old = now() - timedelta(seconds=config.max_queue_lifetime + 10)
        locked.write(locked.record.evolve(added_at=old))
    assert runner.run_once() == 0
    assert store.get(record.id).status == Status.HELD and sink.messages == []


def test_destination_routes_mx_order_implicit_mx_and_null_mx(config: Config) -> None:
    class Stub:
        def __init__(self, answers: dict[str, object]) -> None:
            self.answers = answers

        def mx(self, domain: str) -> list[tuple[int, str]]:
            answer = self.answers[domain]
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[return-value]

    stub = Stub({"mx.test": [(20, "b.mx.test"), (10, "a.mx.test")],
                 "plain.test": NoRecords("plain.test"), "nx.test": NoSuchDomain("nx.test"),
                 "null.test": [(0, ".")]})
    assert [h.address.host for h in destination("mx.test", (), stub).hops] == [
        "a.mx.test", "b.mx.test"]
    assert [str(h) for h in destination("plain.test", (), stub).hops] == ["plain.test:25"]
    for domain, status in (("nx.test", "5.1.2"), ("null.test", "5.1.10")):
        with pytest.raises(RoutingError) as error:
            destination(domain, (), stub)
        assert error.value.permanent and error.value.status == status
    assert destination("anything.test", bootstrap(config), stub).routed  # routes first


def test_refused_connection_is_deferred(tmp_path: Path) -> None:
    from tests.conftest import free_port

    env = tmail_env(tmp_path, TMAIL_ROUTES=f"*=127.0.0.1:{free_port()}")
    config = tmail_config.load(env)
    store = QueueStore(config.queue_dir)
    [record] = store.enqueue(message(), "s@sender.test", ["r@remote.test"])
    runner = Runner(config, store, open_store(config),
                    SmtpTransport(config, resolver=None))  # type: ignore[arg-type]
    runner.run_once()
    runner.shutdown()
    assert "connection refused" in store.get(record.id).last_error


def start_runner(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "queue_runner", *args], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def test_daemon_picks_up_new_mail_quickly_and_mail_queued_while_down(
    env: dict[str, str], store: QueueStore, sink: Sink, tmp_path: Path
) -> None:
    store.enqueue(message("early"), "s@sender.test", ["early@remote.test"])
    daemon = start_runner(env, tmp_path / "runner.log")
    try:
        log = tmp_path / "runner.log"
        assert wait_until(lambda: len(sink.messages) == 1, 10), log.read_text()
        latencies = []
        for n in range(10):
            started = time.monotonic()
            store.enqueue(message(n), "s@sender.test", [f"r{n}@remote.test"])
            assert wait_until(lambda n=n: len(sink.messages) == n + 2, 5, 0.002)
            latencies.append(sink.messages[-1].at - started)
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.5, latencies
    finally:
        stop(daemon)
    assert daemon.returncode == 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, from /proc (clock ticks to seconds)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def test_an_idle_daemon_does_not_wake_itself_by_reading_notify(
    env: dict[str, str], store: QueueStore, sink: Sink, tmp_path: Path
) -> None:
    """Reading the notify file opens and closes it: those inotify events are not new mail.
    When they woke the workers, each read woke every worker again: a core spent on nothing."""
    store.enqueue(message(), "s@sender.test", ["r@remote.test"])  # creates notify
    daemon = start_runner({**env, "TMAIL_RUNNER_PROCESSES": "2"}, tmp_path / "runner.log")
    try:
        assert wait_until(lambda: len(sink.messages) == 1, 10)
        assert wait_until(lambda: len(child_pids(daemon.pid)) == 2, 10)
        pids = [daemon.pid, *child_pids(daemon.pid)]
        time.sleep(1.0)
        before, started = cpu_seconds(pids), time.monotonic()
        time.sleep(3.0)
        share = (cpu_seconds(pids) - before) / (time.monotonic() - started)
        assert share < 0.1, f"idle daemon used {share:.0%} of a core"
    finally:
        stop(daemon)


def test_two_runners_never_deliver_a_message_twice(
    env: dict[str, str], store: QueueStore, sink: Sink, tmp_path: Path
) -> None:
    for n in range(500):
        store.enqueue(message(n), "s@sender.test", [f"r{n}@remote.test"])
    runners = [start_runner(env, tmp_path / f"runner{i}.log", "--once") for i in range(2)]
    assert [r.wait(timeout=120) for r in runners] == [0, 0]
    counts = Counter(m.content.split(b"Message-ID: <")[1].split(b">")[0] for m in sink.messages)
    assert len(counts) == 500 and set(counts.values()) == {1}
    assert list(store.iter_ids()) == []


def test_runner_killed_mid_delivery_loses_nothing(
    env: dict[str, str], store: QueueStore, sink: Sink, tmp_path: Path
) -> None:
    # After 20 messages the sink holds its DATA replies: the runner is surely killed in the
    # middle of deliveries (with a mere delay it could finish all 200 before the kill).
    sink.handler.script = Script(hold_after=20)
    for n in range(200):
        store.enqueue(message(n), "s@sender.test", [f"r{n}@remote.test"])
    first = start_runner(env, tmp_path / "runner.log", "--once")
    assert wait_until(lambda: len(sink.attempts) >= 20 and len(sink.messages) == 20, 60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert len(sink.messages) == 20
    sink.release()
    second = start_runner(env, tmp_path / "runner.log", "--once")
    assert second.wait(timeout=120) == 0
    delivered = {m.content.split(b"Message-ID: <")[1].split(b">")[0] for m in sink.messages}
    assert len(delivered) == 200
    assert list(store.iter_ids()) == []


@pytest.mark.parametrize(("fault", "reply"), [("replace:temp-written", "451 4.3.0 busy"),
                                              ("remove:record-unlinked", "250 2.0.0 ok")])
def test_runner_killed_while_finishing_a_message_loses_no_recipient(
    env: dict[str, str], store: QueueStore, sink: Sink, tmp_path: Path, fault: str, reply: str
) -> None:
    """Killed in the middle of the batch that ends an attempt for three recipients (a
    deferral being written, or a removal after delivery): a second runner delivers every
    recipient that was not delivered yet, and the queue ends up empty and consistent."""
    sink.handler.script = Script(first_data=reply)
    store.enqueue(message(), "s@sender.test", [f"r{n}@remote.test" for n in range(3)])
    killed = start_runner({**env, "TMAIL_FAULT": fault}, tmp_path / "runner.log", "--once")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    second = start_runner(env, tmp_path / "runner.log", "--once")
    assert second.wait(timeout=60) == 0
    recipients = Counter(rcpt for m in sink.messages for rcpt in m.rcpt_tos)
    assert set(recipients) == {f"r{n}@remote.test" for n in range(3)}
    assert list(store.iter_ids()) == []
    assert store.cleanup(grace=0) >= 0 and not list(store.layout.messages.rglob("*.eml"))


def test_release_and_retry_reach_the_sink_within_a_second(
    tmp_path: Path, sink: Sink
) -> None:
    env = tmail_env(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_RETRY_MIN_BACKOFF="300",
                    TMAIL_RETRY_MAX_BACKOFF="600")
    config = tmail_config.load(env)
    store = QueueStore(config.queue_dir)
    ops = QueueOps(store, config.hostname)
    [held] = store.enqueue(message("held"), "s@sender.test", ["held@remote.test"])
    ops.hold(held.id)
    sink.handler.script = Script(data="451 4.3.0 not now")
    [retried] = store.enqueue(message("retried"), "s@sender.test", ["retried@remote.test"])
    daemon = start_runner(env, tmp_path / "runner.log")
    try:
        assert wait_until(lambda: store.get(retried.id).delivery_failed_count == 1, 10)
        sink.handler.script = Script()
        time.sleep(0.3)
        assert sink.messages == [] and store.get(held.id).status == Status.HELD

        for record, operation in ((held, ops.release), (retried, ops.retry)):
            count = len(sink.messages)
            started = time.monotonic()
            operation(record.id)
            assert wait_until(lambda count=count: len(sink.messages) > count, 5, 0.005)
            assert time.monotonic() - started < 1.0
            assert wait_until(lambda record=record: store.get(record.id) is None, 5)
    finally:
        stop(daemon)


def test_daemon_workers_split_the_messages_and_deliver_each_once(
    tmp_path: Path, sink: Sink
) -> None:
    env = tmail_env(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_RUNNER_PROCESSES="3")
    store = QueueStore(tmail_config.load(env).queue_dir)
    daemon = start_runner(env, tmp_path / "runner.log")
    try:
        log = (tmp_path / "runner.log")
        assert wait_until(lambda: len(child_pids(daemon.pid)) == 3), log.read_text()
        for n in range(30):
            store.enqueue(message(n), "s@sender.test", [f"r{n}@remote.test", f"x{n}@remote.test"])
        assert wait_until(lambda: len(sink.messages) >= 30, 20)
        time.sleep(0.5)  # a duplicate would arrive now
        got = Counter(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages)
        assert len(got) == 30 and set(got.values()) == {1}  # each message once...
        assert all(len(m.rcpt_tos) == 2 for m in sink.messages)  # ...with both recipients
        assert list(store.iter_ids()) == []
        daemon.terminate()  # SIGTERM: the workers finish and the daemon exits cleanly
        assert daemon.wait(timeout=10) == 0
        assert wait_until(lambda: child_pids(daemon.pid) == [], 5)
    finally:
        stop(daemon)


def test_deferred_records_are_retried_on_time_between_sweeps(tmp_path: Path, sink: Sink) -> None:
    """Records that come in through hints and are deferred after the start-up sweep are
    retried at their NextDeliveryScheduledAt, not at the next sweep (60 s by default)."""
    env = tmail_env(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_RETRY_MIN_BACKOFF="2",
                    TMAIL_RETRY_MAX_BACKOFF="2", TMAIL_RUNNER_PROCESSES="2")
    assert tmail_config.load(env).runner_sweep_interval == 60  # the default
    sink.handler.script = Script(first_data="451 4.3.0 not yet")
    store = QueueStore(tmail_config.load(env).queue_dir)
    log = tmp_path / "runner.log"
    daemon = start_runner(env, log)
    try:
        assert wait_until(lambda: log.read_text().count("watching") == 2, 20), log.read_text()
        records: list[Record] = []
        due: dict[int, float] = {}

        def all_due_times_seen() -> bool:  # each record's due time, read between attempts
            for record in records:
                current = store.get(record.id)
                if current is not None and current.delivery_failed_count == 1:
                    due.setdefault(record.id, current.next_delivery_at.timestamp())
            return len(due) == len(records)

        for n in range(8):
            records += store.enqueue(message(n), "s@sender.test", [f"r{n}@remote.test"])
            wait_until(all_due_times_seen, 0.2, 0.02)  # spaces the enqueues, watching
        assert wait_until(all_due_times_seen, 20, 0.02), log.read_text()
        assert wait_until(lambda: len(sink.messages) == len(records), 20), log.read_text()
    finally:
        stop(daemon)
    retried = {a.message_id: a.at for a in sink.attempts if a.reply.startswith("2")}
    lateness = sorted(retried[f"m{n}@sender.test".encode()] - due[record.id]
                      for n, record in enumerate(records))
    print(f"retry punctuality (due -> attempt): median {lateness[len(lateness) // 2]:.3f} s, "
          f"worst {lateness[-1]:.3f} s")
    assert lateness[0] > -0.05 and lateness[-1] < 1.0, lateness


def test_an_unexpected_error_of_an_attempt_defers_the_record_with_a_backoff(
    runner: Runner, store: QueueStore, users: UserStore, config: Config
) -> None:
    """sqlite3.DatabaseError is neither OSError nor SMTPException: it must not leave the
    record in status 0 to be retried at every sweep."""
    users.create(f"bob@{LOCAL}", "password1", have_mailbox=True)
    [record] = store.enqueue(message(), "s@sender.test", [f"bob@{LOCAL}"])
    for path in config.users_db.parent.glob(config.users_db.name + "*"):  # with -wal, -shm
        path.unlink()
    config.users_db.write_bytes(b"this is not a database" * 1000)
    assert runner.run_once() == 1
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED and deferred.delivery_failed_count == 1
    assert deferred.last_error.startswith(("451 4.3.0 internal error: DatabaseError",
                                           "451-4.3.0 internal error: DatabaseError"))
    assert deferred.next_delivery_at > now()
    assert runner.run_once() == 0  # no hot loop: the backoff holds


@pytest.mark.parametrize("smtputf8", [True, False])
def test_non_ascii_addresses_go_with_smtputf8_or_bounce_with_5_6_7(
    config: Config, store: QueueStore, smtputf8: bool
) -> None:
    with Sink(smtputf8=smtputf8) as server:
        runner = Runner.build(dataclasses.replace(
            config, routes=(("*", HostPort("127.0.0.1", server.port)),)))
        try:
            store.enqueue(message(), "s@sender.test",
                          ["θσ@remote.test", "ascii@remote.test", "bob@bücher.test"])
            runner.run_once()
        finally:
            runner.shutdown()
        delivered = sorted(rcpt for m in server.messages for rcpt in m.rcpt_tos)
        failed = [block for dsn in dsns(store) for block in report(dsn)[1:]]
    if smtputf8:
        # bücher.test is another transaction, with no need for SMTPUTF8: its A-label
        assert delivered == ["ascii@remote.test", "bob@xn--bcher-kva.test", "θσ@remote.test"]
        assert ["SMTPUTF8"] in [[o for o in opts if o == "SMTPUTF8"]
                                for opts in server.handler.mail_options]
        assert failed == []
    else:  # the domain goes as its A-label; a non-ASCII local part cannot go at all
        assert delivered == ["ascii@remote.test", "bob@xn--bcher-kva.test"]
        [block] = failed
        assert block["Status"] == "5.6.7"
        assert block["Final-Recipient"] == "utf-8; \\x{3B8}\\x{3C3}@remote.test"
    assert all(record.mail_from == "" for record in store.iter_records())  # DSNs only


def test_a_multiline_remote_reply_cannot_forge_dsn_fields_or_log_lines(
    runner: Runner, store: QueueStore, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "550-5.1.1 no such user\r\n550-Action: delivered\r\n550 5.1.1 Status: 2.0.0\rX: y"
    sink.handler.script = Script(rcpt={"no@remote.test": forged})
    store.enqueue(message(), "s@sender.test", ["no@remote.test"])
    with caplog.at_level("INFO", logger="queue_runner"):
        runner.run_once()
    [dsn] = dsns(store)
    raw = dsn.as_bytes()
    [block] = report(dsn)[1:]
    assert (block.get_all("Action"), block.get_all("Status")) == (["failed"], ["5.1.1"])
    assert "X" not in block
    assert " ".join(block["Diagnostic-Code"].split()) == (
        "smtp; 550-5.1.1 no such user 550-Action: delivered 550-5.1.1 Status: 2.0.0 550 X: y")
    assert b"\nAction: delivered" not in raw and b"\rX: y" not in raw
    assert "Original-Recipient" not in block  # none was given (no ORCPT)
    lines = [record.getMessage() for record in caplog.records]
    assert lines and all("\n" not in line and "\r" not in line for line in lines)


def test_one_dsn_per_message_and_attempt_lists_every_failed_recipient(
    runner: Runner, store: QueueStore, sink: Sink
) -> None:
    rcpts = [f"r{n}@remote.test" for n in range(100)]
    sink.handler.script = Script(rcpt={rcpt: "550 5.1.1 no such user" for rcpt in rcpts[1:]})
    store.enqueue(message(), "s@sender.test", rcpts)
    runner.run_once()
    [dsn] = dsns(store)
    blocks = report(dsn)[1:]
    assert [b["Final-Recipient"] for b in blocks] == [f"rfc822; {r}" for r in rcpts[1:]]
    assert {b["Action"] for b in blocks} == {"failed"}
    assert [m.rcpt_tos for m in sink.messages] == [["r0@remote.test"]]
    assert list(store.iter_ids()) == [next(store.iter_records()).id]  # only the DSN is left


def test_a_dsn_to_a_non_ascii_sender_goes_out_with_smtputf8(config: Config,
                                                            store: QueueStore) -> None:
    """The whole SMTPUTF8 path: a bounce for mail from θ@sender.test is written in UTF-8
    and sent with SMTPUTF8 to a server that offers it."""
    with Sink(smtputf8=True) as server:
        server.handler.script = Script(rcpt={"no@remote.test": "550 5.1.1 no such user"})
        runner = Runner.build(dataclasses.replace(
            config, routes=(("*", HostPort("127.0.0.1", server.port)),)))
        try:
            store.enqueue(message(), "θ@sender.test", ["no@remote.test"])
            runner.run_once()  # bounces: the DSN is queued
            runner.run_once()  # delivers the DSN
        finally:
            runner.shutdown()
        [dsn] = server.messages
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == ["θ@sender.test"]
    assert "To: θ@sender.test\r\n".encode() in dsn.content
    assert list(store.iter_ids()) == []
