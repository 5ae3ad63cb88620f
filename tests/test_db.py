"""The SQL layer itself (tmail/db.py): TMAIL_DATABASE_URL, engines after fork, SQLite's
settings, and what a caller sees when the database is not there."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import REPO, free_port, tmail_env
from tmail import config as tmail_config
from tmail.config import ConfigError
from tmail.db import Database, DatabaseUnavailable, open_database
from tmail.users import UserStore
from tmail.users_table import users


@pytest.mark.parametrize(("raw", "expected"), [
    ("postgresql://tmail:pw@db.example.org/tmail",
     "postgresql+psycopg://tmail:pw@db.example.org/tmail"),
    ("postgresql+psycopg://tmail@/tmail?host=/run/postgresql",
     "postgresql+psycopg://tmail@/tmail?host=%2Frun%2Fpostgresql"),
    ("sqlite:////var/lib/tmail/users.db", "sqlite:////var/lib/tmail/users.db"),
])
def test_database_url_accepts_sqlite_and_postgresql(raw: str, expected: str,
                                                    tmp_path: Path) -> None:
    config = tmail_config.load({"TMAIL_DATA_DIR": str(tmp_path), "TMAIL_DATABASE_URL": raw})
    assert config.database == expected


def test_database_url_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    config = tmail_config.load({"TMAIL_DATA_DIR": str(tmp_path)})
    assert config.database == f"sqlite:///{tmp_path.resolve() / 'users.db'}"


@pytest.mark.parametrize("raw", [
    "mysql://tmail:secret@db/tmail", "postgresql+psycopg2://tmail:secret@db/x", "sqlite://",
    "sqlite:///:memory:", "not a url secret"])
def test_database_url_refuses_what_tmail_cannot_use_without_echoing_it(raw: str) -> None:
    with pytest.raises(ConfigError) as refused:
        tmail_config.load({"TMAIL_DATABASE_URL": raw})
    assert str(refused.value).startswith("TMAIL_DATABASE_URL=")
    assert "secret" not in str(refused.value)  # the URL's password is not repeated


def test_open_database_gives_one_database_per_url(tmp_path: Path) -> None:
    config = tmail_config.load({"TMAIL_DATA_DIR": str(tmp_path)})
    assert open_database(config) is open_database(config)


INHERITED: dict[str, Database] = {}  # set before the fork: the children's copy of it


def use_after_fork(key: str) -> int:
    database = INHERITED[key]
    with database.begin() as conn:
        conn.execute(users.insert().values(login=f"child{os.getpid()}@example.org",
                                           passwd="x", dove_passwd="y"))
    with database.connect() as conn:
        return len(conn.execute(select(users.c.id)).all())


def test_a_forked_process_gets_connections_of_its_own(database: Database) -> None:
    """gunicorn, the receiver and the runner fork workers after start-up code used the
    database: a child must not talk on its parent's pooled connection (on PostgreSQL, two
    processes on one socket interleave their protocol messages)."""
    store = UserStore(database, Path("/nonexistent"))
    with database.connect() as conn:  # the parent holds a pooled connection
        conn.execute(select(users.c.id)).all()
    INHERITED["db"] = database
    with multiprocessing.get_context("fork").Pool(4) as pool:
        counts = pool.map(use_after_fork, ["db"] * 4)
    assert max(counts) == 4 and min(counts) >= 1  # the last to commit sees all four
    assert len(store.list()) == 4  # and the parent's pool still works


def test_an_unreachable_database_is_unavailable_not_an_error(tmp_path: Path) -> None:
    database = Database(f"postgresql+psycopg://tmail:secret@127.0.0.1:{free_port()}/tmail")
    with pytest.raises(DatabaseUnavailable) as raised:
        database.migrate()
    assert "127.0.0.1" in str(raised.value) and "secret" not in str(raised.value)


def test_the_cli_exits_with_ex_tempfail_when_the_database_is_unreachable(tmp_path: Path) -> None:
    url = f"postgresql://tmail:secret@127.0.0.1:{free_port()}/tmail"
    env = tmail_env(tmp_path, TMAIL_DATABASE_URL=url)
    done = subprocess.run([sys.executable, "-m", "tmail", "users", "list"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 75, done.stderr  # EX_TEMPFAIL
    assert done.stderr.startswith("tmail: database ") and "Traceback" not in done.stderr
    assert "secret" not in done.stderr


def test_sqlite_is_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'users.db'}")
    database.migrate()
    with database.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_a_sqlite_file_replaced_under_running_processes_is_read_at_once(tmp_path: Path) -> None:
    """An admin restores users.db from a backup (``mv backup.db users.db``): SQLite's open
    connections would go on reading the old, unlinked file; the pool gives them up."""
    live, backup = tmp_path / "users.db", tmp_path / "backup" / "users.db"
    store = UserStore(Database(f"sqlite:///{live}"), tmp_path / "mb")
    store.database.migrate()
    store.create("alice@example.org", "password1")
    restored = Database(f"sqlite:///{backup}")
    restored.migrate()
    UserStore(restored, tmp_path / "mb").create("bob@example.org", "password1")
    restored.dispose()  # a backup is a closed file, checkpointed
    assert store.get("alice@example.org") is not None  # a connection is pooled now
    backup.rename(live)
    for suffix in ("-wal", "-shm"):
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    assert store.get("bob@example.org") is not None
    assert store.get("alice@example.org") is None
