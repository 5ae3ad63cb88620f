"""The users store on its own: concurrent opening, look-ups for the receiver and runner,
upgrades of an existing database, and the change counter the receiver polls."""

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

from tests.conftest import REPO, ApiServer
from tmail.users import CatchallExists, UserExists, UserStore


def open_store(path: str) -> int:
    store = UserStore(Path(path) / "users.db", Path(path) / "mb")
    return len(store.list())


def test_many_processes_may_open_a_new_database_at_once(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(8) as pool:
        assert pool.map(open_store, [str(tmp_path)] * 16) == [0] * 16
    store = UserStore(tmp_path / "users.db", tmp_path / "mb")  # migrations are idempotent
    assert store._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    users = UserStore(tmp_path / "users.db", tmp_path / "mb", default_quota="1G")
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


def query_plans(store: UserStore, lookup: Callable[[], object]) -> list[str]:
    """What SQLite does for every statement ``lookup`` runs (EXPLAIN QUERY PLAN details)."""
    conn = store._connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        lookup()
    finally:
        conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            plans += [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    return plans


@pytest.mark.parametrize("lookup", [
    lambda s: s.find_mailbox("ALICE@example.org"),
    lambda s: s.find_mailbox("nobody@catch.test"),
    lambda s: s.get("Alice@example.org"),
    lambda s: s.authenticate("Alice@example.org", "password1"),
    lambda s: s.set_password("Alice@example.org", "password1"),
])
def test_lookups_use_an_index_not_a_scan_of_the_users(
    store: UserStore, lookup: Callable[[UserStore], object]
) -> None:
    plans = query_plans(store, lambda: lookup(store))
    assert plans and not [plan for plan in plans if plan.startswith("SCAN")], plans


# The users table as tmail-py created it before logins had a lookup key (user_version 1).
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


def test_an_existing_database_upgrades_in_place(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executescript(SCHEMA_V1)
        rows = [("Bob@Example.org", 1, "example.org"), ("bob@example.org", 1, "example.org"),
                ("carol@example.org", 1, "example.org"), ("relay", 0, "")]  # two spellings
        conn.executemany(  # of one login were possible then
            "INSERT INTO users (login, passwd, dove_passwd, have_mailbox, home, domain)"
            " VALUES (?, 'x', 'y', ?, '/h', ?)", rows)
    store = UserStore(db, tmp_path / "mb")
    assert [u.login for u in store.list()] == [row[0] for row in rows]
    assert store.find_mailbox("CAROL@example.org").login == "carol@example.org"
    # The oldest spelling owns the key; the exact spelling still reaches the other one.
    assert store.get("BOB@EXAMPLE.ORG").login == "Bob@Example.org"
    assert store.find_mailbox("bob@EXAMPLE.org").login == "Bob@Example.org"
    assert store.get("bob@example.org").login == "bob@example.org"
    assert store.delete("bob@example.org") and store.get("Bob@Example.org") is not None
    assert store.get("RELAY").login == "relay"
    with closing(sqlite3.connect(db)) as conn:  # what Dovecot's queries read is still there
        columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    assert {"login", "dove_passwd", "active", "have_mailbox", "home", "mailbox_quota"} <= columns
    assert UserStore(db, tmp_path / "mb").get("carol@example.org") is not None  # idempotent


def test_generation_changes_when_any_process_commits(api: ApiServer) -> None:
    """The receiver re-reads its local domains only when this number moves."""
    store = UserStore(api.config.users_db, api.config.mailboxes_dir)
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
    store.create(f"own-{os.getpid()}@gen.test", "password1")
    assert changed()  # this store's own commit
    assert api.session.delete(api.url(f"/users/api-{os.getpid()}@gen.test")).ok
    assert changed()
    assert "gen.test" in store.local_domains()
