"""The users store on its own, on each engine (``engine``: SQLite and PostgreSQL): migrations
run by many processes at once, look-ups for the receiver and runner and their indexes,
upgrades of a users.db made before Alembic, and the change counter the receiver polls."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, select

from tests.conftest import REPO, ApiServer
from tmail.db import DIRECTORY, Database, generations
from tmail.generations import GenerationReader
from tmail.migrations import alembic_config
from tmail.users import CatchallExists, UserExists, UserStore, open_store
from tmail.users_table import users as users_table

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate_and_count(url: str) -> int:
    database = Database(url)
    database.migrate()
    return len(UserStore(database, Path("/nonexistent")).list())


def schema_revision(database: Database) -> str | None:
    with database.connect() as conn:
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def test_many_processes_may_migrate_a_new_database_at_once(database_url: str) -> None:
    """API workers, receivers and runners (of several nodes) start together on an empty
    database: each one migrates, exactly one builds the schema, none fails."""
    with multiprocessing.get_context("fork").Pool(8) as pool:
        assert pool.map(migrate_and_count, [database_url] * 16) == [0] * 16
    database = Database(database_url)
    assert schema_revision(database) == HEAD
    with database.connect() as conn:  # a revision's data was inserted once, not 16 times
        assert conn.execute(select(generations)).all() == [("directory", 0)]
    database.dispose()


@pytest.fixture
def store(database: Database, tmp_path: Path) -> UserStore:
    users = UserStore(database, tmp_path / "mb", default_quota="1G")
    users.create("alice@Example.org", "password1", have_mailbox=True, auth_relay=True)
    users.create("catch@catch.test", "password1", have_mailbox=True, is_catchall=True)
    users.create("relay-only@example.org", "password1")
    return users


def test_authenticate_checks_the_password_and_activity(store: UserStore) -> None:
    assert store.authenticate("alice@Example.org", "password1").auth_relay
    assert store.authenticate("alice@Example.org", "wrong") is None
    assert store.authenticate("nobody@example.org", "password1") is None


def test_find_mailbox_knows_users_and_catchalls(store: UserStore) -> None:
    assert store.find_mailbox("alice@example.org").login == "alice@Example.org"
    assert store.find_mailbox("anyone@catch.test").login == "catch@catch.test"
    assert store.find_mailbox("relay-only@example.org") is None
    assert store.local_domains() == {"example.org", "catch.test"}
    assert store.get("alice@Example.org").mailbox_quota == "1G"


def test_one_catchall_per_domain(store: UserStore) -> None:
    with pytest.raises(CatchallExists):
        store.create("other@catch.test", "password1", have_mailbox=True, is_catchall=True)


def test_logins_are_one_user_whatever_their_case(store: UserStore) -> None:
    assert store.get("ALICE@example.ORG").login == "alice@Example.org"
    assert store.authenticate("Alice@EXAMPLE.org", "password1") is not None
    assert store.set_password("aLiCe@example.org", "password2")
    assert store.authenticate("alice@example.org", "password2") is not None
    with pytest.raises(UserExists) as refused:
        store.create("ALICE@example.org", "password1")
    assert refused.value.raw == "UNIQUE constraint failed: users.login"  # the seed's words
    assert store.delete("ALICE@EXAMPLE.ORG")
    assert store.get("alice@Example.org") is None


@pytest.mark.parametrize("login", ["nul\0@example.org", "surrogate\udcff@example.org"])
def test_a_login_no_database_can_hold_names_nobody(store: UserStore, login: str) -> None:
    """PostgreSQL's text cannot hold NUL: such a login from a client is no one, not a 500."""
    assert store.get(login) is None and store.authenticate(login, "password1") is None
    assert not store.set_password(login, "password2") and not store.delete(login)
    assert store.find_mailbox(login) is None


def query_plans(database: Database, lookup: Callable[[], object]) -> list[str]:
    """The engine's plan for every statement ``lookup`` runs, with sequential scans made
    as costly as the planner allows (PostgreSQL scans a table this small whatever its
    indexes; with ``enable_seqscan`` off, a scan left in the plan means no index fits)."""
    statements: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            statements.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        lookup()
    finally:
        event.remove(database.engine, "before_cursor_execute", record)
    sqlite = database.engine.dialect.name == "sqlite"
    plans = []
    with database.connect() as conn:
        if not sqlite:
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            plans += [row[3] if sqlite else row[0] for row in rows]
    return plans


def generation_statement(database: Database) -> object:
    """``UserStore.generation``'s statement, run where the engine's events see it (the
    store reads it on a connection of its own, :mod:`tmail.generations`)."""
    with database.connect() as conn:
        return conn.exec_driver_sql(GenerationReader.statement(DIRECTORY)).scalar()


@pytest.mark.parametrize("lookup", [
    lambda s: s.find_mailbox("ALICE@example.org"),
    lambda s: s.find_mailbox("nobody@catch.test"),
    lambda s: s.get("Alice@example.org"),
    lambda s: s.authenticate("Alice@example.org", "password1"),
    lambda s: s.set_password("Alice@example.org", "password1"),
    lambda s: generation_statement(s.database),
])
def test_lookups_use_an_index_not_a_scan_of_the_users(
    store: UserStore, lookup: Callable[[UserStore], object]
) -> None:
    plans = query_plans(store.database, lambda: lookup(store))
    scans = [plan for plan in plans if plan.lstrip().startswith(("SCAN", "Seq Scan"))]
    assert plans and not scans, plans


# The users table as tmail-py created it with sqlite3, before Alembic: user_version 1, then
# user_version 2 added login_key (the Alembic baseline).
SCHEMA_V1 = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT, login TEXT NOT NULL UNIQUE, passwd TEXT NOT NULL,
    dove_passwd TEXT NOT NULL, active TEXT NOT NULL DEFAULT 'Y',
    auth_relay INTEGER NOT NULL DEFAULT 0, have_mailbox INTEGER NOT NULL DEFAULT 0,
    mailbox_quota TEXT NOT NULL DEFAULT '', home TEXT NOT NULL DEFAULT '',
    is_catchall INTEGER NOT NULL DEFAULT 0, domain TEXT NOT NULL DEFAULT '');
CREATE INDEX users_domain ON users (domain);
CREATE UNIQUE INDEX users_one_catchall ON users (domain) WHERE is_catchall = 1;
PRAGMA user_version = 1;
"""
SCHEMA_V2 = SCHEMA_V1.replace("PRAGMA user_version = 1;", """
ALTER TABLE users ADD COLUMN login_key TEXT;
CREATE UNIQUE INDEX users_login_key ON users (login_key);
PRAGMA user_version = 2;
""")


def old_database(path: Path, schema: str, rows: list[tuple[str, int, str, str | None]],
                 passwd: str) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(schema)
        columns = "login, passwd, dove_passwd, have_mailbox, home, domain"
        if "login_key" in schema:
            conn.executemany(f"INSERT INTO users ({columns}, login_key)"
                             " VALUES (?, ?, 'y', ?, '/h', ?, ?)",
                             [(login, passwd, mb, domain, key) for login, mb, domain, key in rows])
        else:
            conn.executemany(f"INSERT INTO users ({columns}) VALUES (?, ?, 'y', ?, '/h', ?)",
                             [(login, passwd, mb, domain) for login, mb, domain, _ in rows])


@pytest.mark.parametrize("schema", [SCHEMA_V1, SCHEMA_V2], ids=["user_version1", "user_version2"])
def test_a_database_made_before_alembic_upgrades_in_place(tmp_path: Path, schema: str) -> None:
    db = tmp_path / "users.db"
    hashes = Database(f"sqlite:///{tmp_path / 'hash.db'}")
    hashes.migrate()
    passwd = UserStore(hashes, tmp_path).create("hash@example.org", "old password").passwd
    rows = [("Bob@Example.org", 1, "example.org", "bob@example.org"),
            ("bob@example.org", 1, "example.org", None),  # two spellings of one login were
            ("carol@example.org", 1, "example.org", "carol@example.org"),  # possible then
            ("relay", 0, "", "relay")]
    old_database(db, schema, rows, passwd)
    database = Database(f"sqlite:///{db}")
    database.migrate()
    store = UserStore(database, tmp_path / "mb")
    assert [u.login for u in store.list()] == [row[0] for row in rows]
    assert store.authenticate("Carol@Example.org", "old password").login == "carol@example.org"
    assert store.find_mailbox("CAROL@example.org").login == "carol@example.org"
    # The oldest spelling owns the key; the exact spelling still reaches the other one.
    assert store.get("BOB@EXAMPLE.ORG").login == "Bob@Example.org"
    assert store.find_mailbox("bob@EXAMPLE.org").login == "Bob@Example.org"
    assert store.get("bob@example.org").login == "bob@example.org"
    assert store.delete("bob@example.org") and store.get("Bob@Example.org") is not None
    assert store.get("RELAY").login == "relay"
    assert schema_revision(database) == HEAD
    with database.connect() as conn:  # what Dovecot's queries read is still there
        columns = {column["name"] for column in inspect(conn).get_columns("users")}
        indexes = {index["name"] for index in inspect(conn).get_indexes("users")}
    assert {"login", "dove_passwd", "active", "have_mailbox", "home", "mailbox_quota"} <= columns
    assert {"users_login_key", "users_domain", "users_one_catchall"} <= indexes
    again = Database(f"sqlite:///{db}")  # the next start: nothing to do
    again.migrate()
    assert UserStore(again, tmp_path / "mb").get("carol@example.org") is not None
    store.create("dave@example.org", "password1")  # the generation row exists: writes work


def test_generation_changes_when_any_process_commits(engine_api: ApiServer) -> None:
    """The receiver re-reads its local domains only when this number moves; on PostgreSQL
    the processes could as well be on other nodes."""
    api = engine_api
    store = open_store(api.config)
    seen = [store.generation()]
    assert store.generation() == seen[-1]  # nothing changed: the same number

    def changed() -> bool:
        seen.append(store.generation())
        return seen[-1] != seen[-2]

    cli = subprocess.run(
        [sys.executable, "-m", "tmail", "users", "add", f"cli-{os.getpid()}@gen.test",
         "--password", "password1", "--mailbox"],
        cwd=REPO, env=api.env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert changed()  # the CLI's commit
    created = api.session.post(api.url(f"/users/api-{os.getpid()}@gen.test"),
                               json={"passwd": "password1", "haveMailbox": True})
    assert created.status_code == 201
    assert changed()  # a gunicorn worker's commit
    assert not changed()
    assert api.session.put(api.url(f"/users/api-{os.getpid()}@gen.test"),
                           json={"passwd": "password2"}).status_code == 204
    assert changed()  # a new password
    store.create(f"own-{os.getpid()}@gen.test", "password1")
    assert changed()  # this store's own commit
    assert api.session.delete(api.url(f"/users/api-{os.getpid()}@gen.test")).ok
    assert changed()
    assert "gen.test" in store.local_domains()
    with store.database.connect() as conn:  # the users table is the one the API writes
        assert conn.scalar(select(users_table.c.id).where(
            users_table.c.login == f"own-{os.getpid()}@gen.test")) is not None
