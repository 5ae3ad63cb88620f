"""Failed sign-ins counted per client IP, shared by every process: the brake on guessing.

A small interface (:class:`SignInThrottle`) so that any sign-in (the API's Basic auth now, a
web console's form later) asks the same questions: may this client try now, and it failed or
succeeded. The counts live in a small SQLite table in the data dir, so that gunicorn's
workers (and a restart) share them: counted per worker, an attacker would get N times the
attempts by spreading them over new connections.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from tmail import sqlite as tmail_sqlite

MAX_FAILURES = 10  # failed sign-ins from one IP ...
WINDOW = 600.0  # ... within this many seconds, then no more tries until the window ends


class SignInThrottle(Protocol):
    def retry_after(self, client: str) -> int:
        """Seconds ``client`` must wait before it may try again (0: it may try now)."""

    def failed(self, client: str) -> None: ...

    def succeeded(self, client: str) -> None: ...


class SqliteThrottle:
    """At most ``max_failures`` failed sign-ins per client IP in a fixed window of ``window``
    seconds that starts at its first failure (the way fail2ban's ``maxretry``/``findtime``
    count); a success forgets the client's failures."""

    def __init__(self, db_path: Path, max_failures: int = MAX_FAILURES,
                 window: float = WINDOW) -> None:
        self.db_path, self.max_failures, self.window = db_path, max_failures, window
        self._local = threading.local()
        self._conn().execute("CREATE TABLE IF NOT EXISTS sign_in_failures ("
                             "client TEXT PRIMARY KEY, failures INTEGER NOT NULL,"
                             " since REAL NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # one per thread, as gunicorn's gthread workers serve with threads
            conn = self._local.conn = tmail_sqlite.connect(self.db_path, synchronous="NORMAL")
        return conn

    def _row(self, client: str) -> tuple[int, float] | None:
        return self._conn().execute(
            "SELECT failures, since FROM sign_in_failures WHERE client = ?", (client,)
        ).fetchone()

    def retry_after(self, client: str) -> int:
        row = self._row(client)
        if row is None or row[0] < self.max_failures:
            return 0
        return max(0, math.ceil(row[1] + self.window - time.time()))

    def failed(self, client: str) -> None:
        moment = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:  # an expired window starts again at this failure
            conn.execute("DELETE FROM sign_in_failures WHERE since < ?", (moment - self.window,))
            conn.execute(
                "INSERT INTO sign_in_failures (client, failures, since) VALUES (?, 1, ?)"
                " ON CONFLICT (client) DO UPDATE SET failures = failures + 1", (client, moment))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def succeeded(self, client: str) -> None:
        if self._row(client) is not None:  # a read, not a write, on every good request
            self._conn().execute("DELETE FROM sign_in_failures WHERE client = ?", (client,))
