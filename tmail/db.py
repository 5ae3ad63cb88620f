"""The SQL layer every tmail process shares: SQLite by default, PostgreSQL for several nodes.

``TMAIL_DATABASE_URL`` picks the engine (:attr:`tmail.config.Config.database`); unset, it is
SQLite at ``<data dir>/users.db``, so that one machine needs nothing but Python. Every table
registers on :data:`metadata` (SQLAlchemy Core, no ORM); the schema is built and upgraded only
by the Alembic revisions in :mod:`tmail.migrations`, run by :meth:`Database.migrate` when a
process starts.

Callers see two kinds of failure: a constraint (``sqlalchemy.exc.IntegrityError``, the store
turns it into its domain error) and :class:`DatabaseUnavailable`, for anything that says the
database cannot be reached or used right now. That one is temporary by nature, so the API maps
it to ``503``, the receiver to ``451 4.3.0`` and the runner to a deferral; the pool's pre-ping
reconnects by itself once the server is back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from tmail import sqlite as tmail_sqlite
from tmail.generations import GenerationReader

if TYPE_CHECKING:
    from tmail.config import Config

log = logging.getLogger(__name__)

# Constraint names Alembic can refer to later (``batch_alter_table`` on SQLite needs them).
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# Counters that move in the same transaction as a write, so that a process (or another node)
# holding a cache derived from those rows sees at once that it is stale. "directory": users,
# and whatever else decides which domains and recipients are local.
generations = Table(
    "generations", metadata,
    Column("name", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
)
DIRECTORY = "directory"

# PostgreSQL: a few connections per process are enough (a gunicorn thread, a receiver's
# executor thread or a runner's delivery thread each holds one for one statement or two).
_POOL = {"pool_size": 2, "max_overflow": 8, "pool_timeout": 10, "pool_recycle": 1800}
_PG_CONNECT = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30,
               "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 30_000}
_SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used right now: a temporary condition.

    Raised from the driver's connection-level errors (DB-API ``OperationalError`` and
    ``InterfaceError``: refused or dropped connection, server shutting down, SQLite file that
    cannot be opened or stays locked past the busy timeout), from a connection SQLAlchemy
    had to invalidate, and from a pool that had no connection to give in time.
    """


def _unavailable(error: Exception) -> bool:
    if isinstance(error, sa_exc.TimeoutError):  # the pool's, not the server's
        return True
    return isinstance(error, sa_exc.DBAPIError) and (
        isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
        or error.connection_invalidated)


@contextmanager
def _translated(url: URL) -> Iterator[None]:
    try:
        yield
    except (sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
        if not _unavailable(error):
            raise
        raise unavailable_error(url, error) from error


def unavailable_error(url: URL, error: Exception) -> DatabaseUnavailable:
    reason = " ".join(str(getattr(error, "orig", None) or error).split())  # one line
    return DatabaseUnavailable(
        f"database {url.render_as_string(hide_password=True)} unavailable: {reason}")


class Database:
    """One database as one process uses it: an engine (its pool) made lazily, once per pid.

    A pooled connection must never be used by two processes: gunicorn forks its workers and
    the receiver and runner fork theirs after start-up code may have opened connections.
    The first use in a new process replaces the pool (``dispose(close=False)``: the parent's
    connections are left to the parent, not closed under its feet).
    """

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        # Reads run outside transactions: on a server, no BEGIN and ROLLBACK round trips
        # around each look-up; on SQLite, no BEGIN at all (see _sqlite_begin).
        self._read_options: dict[str, Any] = (
            {"tmail_read_only": True} if self.url.get_backend_name() == "sqlite"
            else {"isolation_level": "AUTOCOMMIT"})
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = 0
        self._migrated = False
        identity = ((lambda: _file_identity(self.url.database or ""))
                    if self.url.get_backend_name() == "sqlite" else (lambda: None))
        self._generations = GenerationReader(lambda: self.engine, identity, self._unavailable)

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is not None and self._pid == pid:
            return self._engine
        with self._lock:
            if self._engine is None:
                self._engine = _create_engine(self.url)
            elif self._pid != pid:
                self._engine.dispose(close=False)
            self._pid = pid
            return self._engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends (rolled back on an exception).

        On SQLite it starts with ``BEGIN IMMEDIATE``: the write lock is taken first, so that
        two writers queue on the busy timeout instead of one failing when it upgrades.
        """
        self._ensure_migrated()
        with _translated(self.url), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads: each statement sees what was committed before it."""
        self._ensure_migrated()
        with _translated(self.url), self.engine.connect() as conn:
            conn.execution_options(**self._read_options)
            yield conn

    def generation(self, name: str = DIRECTORY) -> int:
        """The counter ``name`` (:data:`generations`) as committed now: what a cache built
        on those rows compares with before each use (:mod:`tmail.generations`)."""
        self._ensure_migrated()
        return self._generations.read(name)

    def _unavailable(self, error: Exception) -> DatabaseUnavailable:
        return unavailable_error(self.url, error)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (once per process; race-free, see
        :func:`tmail.migrations.upgrade`). Every process calls it at start-up."""
        if self._migrated:
            return
        if self.url.get_backend_name() == "sqlite":  # a new data dir: SQLite makes the file
            Path(self.url.database or "").parent.mkdir(parents=True, exist_ok=True)
        alembic_log = logging.getLogger("alembic")  # its plugins, context and steps at INFO
        level = alembic_log.level
        alembic_log.setLevel(max(logging.WARNING, level))
        try:
            from tmail import migrations

            with _translated(self.url), self.engine.begin() as conn:
                migrations.upgrade(conn)
        finally:
            alembic_log.setLevel(level)
        self._migrated = True

    def start(self) -> None:
        """Migrate at a long-running process's start-up if the database is there; if it is
        not, say so in one line and leave the migration to the first use.

        A receiver, runner or API worker started during an outage must not crash-loop with
        a traceback each time: it starts, answers 451 / 503 / defers like a process whose
        database went away later, and is at the newest schema before its first query.
        """
        try:
            self.migrate()
        except DatabaseUnavailable as error:
            log.warning("starting without the database, which will be migrated at first "
                        "use: %s", error)

    def _ensure_migrated(self) -> None:
        if not self._migrated:
            self.migrate()  # DatabaseUnavailable while the server is still away

    def dispose(self) -> None:
        """Close the pooled connections (tests, and a process that is done with them)."""
        self._generations.close()
        if self._engine is not None:
            self._engine.dispose()


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, pool_pre_ping=True,
                               connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})
        _watch_sqlite_file(engine, url.database or "")
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # An unreachable host must not hang a RCPT: a bound on connecting, and TCP keepalives
    # and a user timeout, so that a pooled connection to a host gone silent fails in
    # seconds instead of the kernel's quarter of an hour. Settings in the URL win.
    connect_args = {key: value for key, value in _PG_CONNECT.items() if key not in url.query}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **_POOL)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _watch_sqlite_file(engine: Engine, path: str) -> None:
    """Settings on each new connection, and a pooled connection given up when the file
    was replaced or removed since it was opened (SQLite would go on reading
    the old inode: a users.db restored from a backup must be seen by every process at once).
    Raising ``DisconnectionError`` at checkout is the pool's own way to get a new one."""

    def connected(dbapi_connection: Any, record: Any) -> None:
        _sqlite_settings(dbapi_connection)
        record.info["tmail_file"] = _file_identity(path)

    def checkout(_dbapi_connection: Any, record: Any, _proxy: object) -> None:
        if _file_identity(path) != record.info.get("tmail_file"):
            raise sa_exc.DisconnectionError(f"{path} was replaced or removed")

    event.listen(engine, "connect", connected)
    event.listen(engine, "checkout", checkout)


def _sqlite_settings(dbapi_connection: Any) -> None:
    """WAL (readers never block the writer; Dovecot reads the same file), a busy timeout,
    foreign keys enforced, and transactions begun by us (:func:`_sqlite_begin`): the
    sqlite3 module's own implicit ``BEGIN`` is deferred and comes too late for DDL."""
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    tmail_sqlite.use_wal(dbapi_connection)
    dbapi_connection.execute("PRAGMA synchronous=FULL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _sqlite_begin(conn: Connection) -> None:
    if not conn.get_execution_options().get("tmail_read_only"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def bump_generation(conn: Connection, name: str = DIRECTORY) -> None:
    """Move the counter ``name``: call it in the transaction of every write that changes
    what a cache built on it holds (a commit and its new number are seen together)."""
    conn.execute(update(generations).where(generations.c.name == name)
                 .values(value=generations.c.value + 1))


_OPEN: OrderedDict[str, Database] = OrderedDict()
_OPEN_LOCK = threading.Lock()
_OPEN_MAX = 8  # one in production; tests open one per data dir


def open_migrated(config: Config) -> Database:
    """The database of a command (the CLI): migrated now, so that a command stops at once
    (DatabaseUnavailable, exit 75) when the database is away, where a server would start and
    migrate at first use (:meth:`Database.start`)."""
    database = open_database(config)
    database.migrate()
    return database


def open_database(config: Config) -> Database:
    """The process's :class:`Database` for ``config`` (one per URL, made on first use)."""
    url = config.database
    with _OPEN_LOCK:
        database = _OPEN.get(url)
        if database is None:
            database = _OPEN[url] = Database(url)
            if len(_OPEN) > _OPEN_MAX:  # still usable by its holders: a new pool on next use
                _OPEN.popitem(last=False)[1].dispose()
        _OPEN.move_to_end(url)
        return database
