"""Who is signed in to the console: a server-side session behind a signed cookie.

Flask's session is a signed cookie; on its own it cannot be revoked, so a copied cookie
would outlive "Sign out". The cookie therefore holds only a random token, and the server
keeps the token's hash with its expiry in the data dir's ``sign-in.db`` (next to the sign-in
throttle, shared by gunicorn's workers and kept across restarts): signing out deletes the
row, and a sign-in ends ``TMAIL_CONSOLE_SESSION_TTL`` seconds after it began whatever the
cookie says. A new sign-in always gets a new token (no session fixation).

The key that signs cookies and CSRF tokens is made once per data dir (``console.key``,
mode 0600) and never leaves it; each node of a cluster has its own, so a console session
is per node (put a load balancer's sticky sessions in front of several).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

from flask import Flask, current_app, session

from tmail import sqlite as tmail_sqlite
from tmail.config import Config

COOKIE = "tmail_console"
_TOKEN = "sid"


def secret_key(path: Path) -> bytes:
    """The data dir's console key, created on first use. Written to a temp file and linked
    into place, so that workers starting together agree on one key and none reads half."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # fails if another process won the race: use its key
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
    return path.read_bytes()


class SessionStore:
    """Console sign-ins by token hash, with their expiry."""

    def __init__(self, db_path: Path, ttl: float) -> None:
        self.db_path, self.ttl = db_path, ttl
        self._local = threading.local()
        self._conn().execute("CREATE TABLE IF NOT EXISTS console_sessions ("
                             "token_hash TEXT PRIMARY KEY, expires REAL NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # one per thread: gunicorn's gthread workers serve with threads
            conn = self._local.conn = tmail_sqlite.connect(self.db_path, synchronous="NORMAL")
        return conn

    @staticmethod
    def _hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def open(self) -> str:
        """A new sign-in: its token (for the cookie). Expired rows go at the same time."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        conn = self._conn()
        conn.execute("DELETE FROM console_sessions WHERE expires < ?", (now,))
        conn.execute("INSERT INTO console_sessions (token_hash, expires) VALUES (?, ?)",
                     (self._hash(token), now + self.ttl))
        return token

    def valid(self, token: str) -> bool:
        row = self._conn().execute("SELECT expires FROM console_sessions WHERE token_hash = ?",
                                   (self._hash(token),)).fetchone()
        return row is not None and row[0] > time.time()

    def close(self, token: str) -> None:
        self._conn().execute("DELETE FROM console_sessions WHERE token_hash = ?",
                             (self._hash(token),))


def init_app(app: Flask, config: Config) -> None:
    app.secret_key = secret_key(config.data_dir / "console.key")
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_SECURE=True,  # the API and the console are served over HTTPS only
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=config.console_session_ttl),
        SESSION_REFRESH_EACH_REQUEST=False,  # the sign-in's end is fixed at sign-in
    )
    app.extensions["tmail_console_sessions"] = SessionStore(
        config.data_dir / "sign-in.db", config.console_session_ttl)


def _store() -> SessionStore:
    return current_app.extensions["tmail_console_sessions"]


def signed_in() -> bool:
    token = session.get(_TOKEN)
    return isinstance(token, str) and _store().valid(token)


def sign_in() -> None:
    session.clear()  # whatever the browser had before (a CSRF token) is not carried over
    session.permanent = True
    session[_TOKEN] = _store().open()


def sign_out() -> None:
    token = session.get(_TOKEN)
    if isinstance(token, str):
        _store().close(token)
    session.clear()
