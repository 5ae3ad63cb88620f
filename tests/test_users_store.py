"""The users store on its own: concurrent opening, look-ups for the receiver and runner."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from tmail.users import CatchallExists, UserStore


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
