"""SQLite as several tmail processes share it: WAL, a busy timeout, and a safe switch to WAL."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect(path: Path, *, synchronous: str = "FULL",
            check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (``BEGIN`` explicitly), WAL, waiting up to 10 s.

    ``check_same_thread=False`` only for a connection its owner guards with a lock.
    """
    conn = sqlite3.connect(path, timeout=10, isolation_level=None,
                           check_same_thread=check_same_thread)
    conn.execute("PRAGMA busy_timeout=10000")
    use_wal(conn)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def use_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the database to WAL (once: the mode is stored in the file).

    Several processes open a new database at the same instant (gunicorn workers, the
    receiver, the runner); switching the journal mode needs an exclusive lock that SQLite
    does not wait for, so a process that loses the race retries instead of failing.
    """
    for attempt in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == attempts - 1:
                raise
            time.sleep(0.02)
