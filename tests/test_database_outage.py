"""The database down or unreachable: every front answers "try again later" (the store raises
DatabaseUnavailable, the API 503, the receiver 451 4.3.0, the runner defers), nothing is lost,
and service comes back by itself, without a restart, when the database does."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from queue_runner.delivery import Runner
from tests.conftest import start_api, stop, tmail_env
from tests.postgres import PostgresServer
from tests.smtp_helpers import LOCAL, add_users, start_receiver
from tmail import config as tmail_config
from tmail.db import Database, DatabaseUnavailable
from tmail.queue import QueueStore, Status
from tmail.queue.record import now
from tmail.users import UserStore


@dataclass
class Outage:
    down: Callable[[], None]
    up: Callable[[], None]


@contextlib.contextmanager
def stopped(postgres: PostgresServer) -> Iterator[None]:
    """PostgreSQL stopped (``-m fast``: open sessions are cut, as by a restart) for the
    block, and started again whatever happens in it: the server is the session's."""
    postgres.stop()
    try:
        yield
    finally:
        if not postgres.running:
            postgres.start()


@pytest.fixture
def outage(engine: str, database: Database, request: pytest.FixtureRequest) -> Iterator[Outage]:
    """How the test's database goes away and comes back on each engine. SQLite: its file
    replaced by a directory (SQLite cannot open it); PostgreSQL: the server
    stopped, then started again on the same port. Pooled connections stay open meanwhile
    (a SQLite one is given up because the file it opened is gone)."""
    if engine == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        yield Outage(postgres.stop, postgres.start)
        if not postgres.running:
            postgres.start()
        return
    path = Path(database.url.database or "")
    away = path.with_name("users.db.away")

    def down() -> None:
        path.rename(away)
        path.mkdir()

    def up() -> None:
        path.rmdir()
        away.rename(path)

    yield Outage(down, up)
    if away.exists():
        up()


def test_the_store_says_unavailable_while_the_database_is_away_then_recovers(
    database: Database, outage: Outage, tmp_path: Path
) -> None:
    store = UserStore(database, tmp_path / "mb")
    store.create("alice@example.org", "password1", have_mailbox=True)
    outage.down()
    for lookup in (lambda: store.get("alice@example.org"),
                   lambda: store.authenticate("alice@example.org", "password1"),
                   lambda: store.find_mailbox("alice@example.org"),
                   lambda: store.create("bob@example.org", "password1"),
                   store.generation, store.list):
        with pytest.raises(DatabaseUnavailable) as raised:
            lookup()
        assert "unavailable" in str(raised.value) and "\n" not in str(raised.value)
    outage.up()
    assert store.authenticate("alice@example.org", "password1") is not None  # same store
    assert store.create("bob@example.org", "password1").login == "bob@example.org"


def test_the_api_answers_503_while_postgresql_is_stopped_then_recovers(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    api = start_api(tmp_path, TMAIL_DATABASE_URL=postgres.url(postgres.create_database()))
    try:
        assert api.session.post(api.url("/users/alice@example.org"),
                                json={"passwd": "password1"}).status_code == 201
        with stopped(postgres):
            for method, path, body in [("GET", "/users", None),
                                       ("GET", "/users/alice@example.org", None),
                                       ("POST", "/users/bob@example.org", {"passwd": "secret1"}),
                                       ("PUT", "/users/alice@example.org", {"passwd": "password2"}),
                                       ("DELETE", "/users/alice@example.org", None)]:
                response = api.session.request(method, api.url(path), json=body, timeout=30)
                assert response.status_code == 503, (method, path, response.text)
                assert response.json()["msg"] == "database unavailable"
                assert "unavailable" in response.json()["raw"]
                assert response.headers["Retry-After"].isdigit()
                assert postgres.password not in response.text
            assert api.session.get(api.url("/ping")).status_code == 200  # no database needed
        # Back without a restart of tmail: the pool's pre-ping replaces the dead connections.
        assert api.session.get(api.url("/users/alice@example.org")).status_code == 200
        assert api.session.post(api.url("/users/bob@example.org"),
                                json={"passwd": "secret1"}).status_code == 201
    finally:
        stop(api.process)


def test_the_api_answers_503_when_sqlite_stays_locked_past_the_busy_timeout(
    tmp_path: Path
) -> None:
    """Another process holding the write lock beyond the busy timeout (a stuck backup, a
    long admin transaction) is a temporary failure of the write, not a 500."""
    api = start_api(tmp_path)
    try:
        locker = sqlite3.connect(api.config.users_db, isolation_level=None)
        with contextlib.closing(locker) as conn:
            conn.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            refused = api.session.post(api.url("/users/alice@example.org"),
                                       json={"passwd": "password1"}, timeout=60)
            assert refused.status_code == 503, refused.text
            assert time.monotonic() - started >= 9  # it waited for the lock first
            assert "locked" in refused.json()["raw"]
            assert api.session.get(api.url("/users")).status_code == 200  # WAL: reads go on
            conn.execute("ROLLBACK")
        assert api.session.post(api.url("/users/alice@example.org"),
                                json={"passwd": "password1"}).status_code == 201
    finally:
        stop(api.process)


def test_the_receiver_answers_451_at_rcpt_and_auth_while_postgresql_is_stopped(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    env = tmail_env(tmp_path, TMAIL_SMTP_AUTH_REQUIRE_TLS="false",
                    TMAIL_DATABASE_URL=postgres.url(postgres.create_database()))
    add_users(env)
    receiver = start_receiver(env, tmp_path / "receiver.log")
    try:
        with stopped(postgres), receiver.smtp() as client:
            client.ehlo()
            plain = base64.b64encode(f"\0alice@{LOCAL}\0password1".encode()).decode()
            assert client.docmd("AUTH", f"PLAIN {plain}") == (
                451, b"4.3.0 Temporary authentication failure, try again later")
            assert client.docmd("MAIL", "FROM:<s@sender.test>")[0] == 250
            code, text = client.docmd("RCPT", f"TO:<bob@{LOCAL}>")
            assert (code, text) == (451, f"4.3.0 <bob@{LOCAL}>: Temporary lookup failure".encode())
        with receiver.smtp() as client:  # the same receiver, no restart
            client.login(f"alice@{LOCAL}", "password1")
            assert client.sendmail("s@sender.test", [f"bob@{LOCAL}"],
                                   b"Subject: x\r\n\r\nhi\r\n") == {}
    finally:
        stop(receiver.process)
    assert "Traceback" not in receiver.log.read_text()


def test_a_receiver_started_while_postgresql_is_stopped_answers_451_then_serves(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Started during an outage, on a database never migrated: it must not crash-loop (one
    traceback per restart); it answers like a receiver whose database went away later, and
    migrates and serves once the server is back."""
    env = tmail_env(tmp_path, TMAIL_SMTP_AUTH_REQUIRE_TLS="false",
                    TMAIL_DATABASE_URL=postgres.url(postgres.create_database()))
    with stopped(postgres):
        receiver = start_receiver(env, tmp_path / "receiver.log")
        try:
            with receiver.smtp() as client:
                client.ehlo()
                assert client.docmd("MAIL", "FROM:<s@sender.test>")[0] == 250
                assert client.docmd("RCPT", f"TO:<bob@{LOCAL}>")[0] == 451
        except BaseException:
            stop(receiver.process)
            raise
    try:
        add_users(env)
        with receiver.smtp() as client:  # the same receiver, no restart
            client.login(f"alice@{LOCAL}", "password1")
            assert client.sendmail("s@sender.test", [f"bob@{LOCAL}"],
                                   b"Subject: x\r\n\r\nhi\r\n") == {}
    finally:
        stop(receiver.process)
    log = receiver.log.read_text()
    assert "Traceback" not in log and "starting without the database" in log


def test_the_runner_defers_a_local_delivery_while_postgresql_is_stopped(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    env = tmail_env(tmp_path, TMAIL_DATABASE_URL=postgres.url(postgres.create_database()))
    add_users(env)
    config = tmail_config.load(env)
    queue = QueueStore(config.queue_dir)
    [record] = queue.enqueue(b"Subject: x\r\n\r\nhi\r\n", "s@sender.test", [f"bob@{LOCAL}"])
    runner = Runner.build(config)
    try:
        with stopped(postgres):
            runner.run_once()
        deferred = queue.get(record.id)
        assert deferred.status == Status.SCHEDULED and deferred.delivery_failed_count == 1
        assert deferred.last_error.startswith("451 4.3.0 database "), deferred.last_error
        assert postgres.password not in deferred.last_error
        with queue.locked(record.id) as locked:
            locked.write(locked.record.evolve(next_delivery_at=now()))
        runner.run_once()
    finally:
        runner.shutdown()
    assert queue.get(record.id) is None
    home = config.mailboxes_dir / "r" / LOCAL / "b" / "bob" / "Maildir" / "new"
    assert len(list(home.iterdir())) == 1


def test_a_generation_read_after_a_restart_of_the_database_is_answered(
    database: Database, outage: Outage, tmp_path: Path
) -> None:
    """The generation (read per RCPT) has a connection of its own, kept between reads
    (tmail.generations): one cut by a restart is replaced at once, not refused once."""
    store = UserStore(database, tmp_path / "mb")
    store.create("alice@example.org", "password1")
    before = store.generation()
    outage.down()
    outage.up()
    assert store.generation() == before
    store.create("bob@example.org", "password1")
    assert store.generation() == before + 1


def test_a_generation_read_sees_a_sqlite_file_restored_from_a_backup(tmp_path: Path) -> None:
    live, backup = tmp_path / "users.db", tmp_path / "backup" / "users.db"
    store = UserStore(Database(f"sqlite:///{live}"), tmp_path / "mb")
    store.create("alice@example.org", "password1")
    restored = UserStore(Database(f"sqlite:///{backup}"), tmp_path / "mb")
    for number in range(3):
        restored.create(f"user{number}@example.org", "password1")
    restored_generation = restored.generation()
    restored.database.dispose()
    assert store.generation() != restored_generation  # its connection is kept now
    backup.rename(live)
    for suffix in ("-wal", "-shm"):  # as test_db's restore: the old file's WAL goes too
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    assert store.generation() == restored_generation
