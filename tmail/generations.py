"""Reading a generation counter (:data:`tmail.db.generations`) on the mail path, cheaply.

The receiver asks "did the directory change?" for every recipient and every signed message
(:mod:`tmail.directory.lookup`). Through the pool and SQLAlchemy Core, that one-row read
cost about 0.6 ms of CPU (a checkout with its pre-ping and file check, a statement compiled
from its cache key, a result object): a tenth of a message's CPU in the receiver, twice per
message. Here it is one prepared statement on one DB-API connection kept for the purpose:
a few microseconds on SQLite, one round trip on PostgreSQL.

The kept connection is read-only and in autocommit, so each read sees every commit before
it (what makes a change effective at the next SMTP command). It is never shared across a
fork (a new process opens its own and leaves its parent's alone), it is given up when the
SQLite file was replaced (a restored ``users.db``), and a read that fails on it is tried
once more on a new one, so that a database server restarted since the last read costs no
refusal; only a database that still cannot answer raises :class:`DatabaseUnavailable`.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

_NAME = re.compile(r"[a-z_]{1,32}")


class GenerationReader:
    """One per :class:`tmail.db.Database`; thread-safe (a lock around the one connection:
    a read holds it for microseconds, or one round trip)."""

    def __init__(self, engine: Callable[[], Engine], file_identity: Callable[[], Any],
                 unavailable: Callable[[Exception], Exception]) -> None:
        self._engine = engine  # the Database's engine of this process
        self._file_identity = file_identity  # SQLite: (st_dev, st_ino); None otherwise
        self._unavailable = unavailable  # a connection error -> DatabaseUnavailable
        self._lock = threading.Lock()
        self._connection: Any = None  # a PoolProxiedConnection, checked out for good
        self._identity: Any = None
        self._pid = 0
        self._inherited: list[Any] = []

    @staticmethod
    def statement(name: str) -> str:
        """The query of one read (a primary-key look-up); ``name`` is put in its text."""
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"not a generation name: {name!r}")
        return f"SELECT value FROM generations WHERE name = '{name}'"

    def read(self, name: str) -> int:
        """The counter ``name`` as committed now (0 when its row is missing)."""
        statement = self.statement(name)
        with self._lock:
            try:
                return self._read(statement)
            except Exception as error:
                self._drop()
                if not self._is_connection_error(error):
                    raise
            try:  # once more, on a new connection (its checkout pings the database)
                return self._read(statement)
            except Exception as error:
                self._drop()
                if not self._is_connection_error(error):
                    raise
                raise self._unavailable(error) from error

    def _read(self, statement: str) -> int:
        connection = self._connected()
        cursor = connection.cursor()
        try:
            cursor.execute(statement)
            row = cursor.fetchone()
        finally:
            cursor.close()
        return int(row[0]) if row else 0

    def _connected(self) -> Any:
        if self._pid != os.getpid():  # a forked child: the parent's connection is not ours
            if self._connection is not None:  # kept referenced: collected, it would be
                self._inherited.append(self._connection)  # reset on the parent's socket
            self._connection, self._pid = None, os.getpid()
        elif self._connection is not None and self._file_identity() != self._identity:
            self._drop()  # the SQLite file was replaced: read the new one
        if self._connection is None:
            engine = self._engine()
            self._identity = self._file_identity()
            connection = engine.raw_connection()
            if engine.dialect.name != "sqlite":  # SQLite's connections are in autocommit
                connection.driver_connection.autocommit = True  # no transaction left open
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        """Give the connection up for good: never back to the pool, where a PostgreSQL
        connection left in autocommit would turn the next ``begin()`` into no transaction."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a broken connection goes either way
                connection.invalidate()

    def _is_connection_error(self, error: Exception) -> bool:
        """A connection that failed or was refused (SQLAlchemy's, from the checkout, or the
        driver's own ``OperationalError``/``InterfaceError`` from our cursor)."""
        if isinstance(error, sa_exc.DBAPIError | sa_exc.TimeoutError):
            return True
        dbapi = self._engine().dialect.loaded_dbapi
        return isinstance(error, dbapi.OperationalError | dbapi.InterfaceError)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._drop()
            self._connection = None
