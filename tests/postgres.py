"""A real, private PostgreSQL server for the tests: one cluster per test session.

Debian's ``postgresql`` package (installed through ``scripts/apt-ensure`` when missing)
provides the binaries; the cluster is the tests' own: ``initdb`` in a temp dir, a free
loopback port, its Unix socket in that dir, never the system cluster or its config. Tests run
as root and PostgreSQL refuses to, so the server runs as the ``postgres`` system account
(``nobody`` where there is none). Durability settings are off: a test database that a crash
loses is recreated by the next run, and ``fsync`` would only make every CREATE DATABASE slow.

Clients log in over TCP with a password (SCRAM), as tmail and Dovecot do on a server, so the
URLs the tests use carry one. Registered as a plugin by tests/conftest.py; use the
``postgres`` fixture::

    def test_x(postgres):
        url = postgres.url(postgres.create_database())
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

SUPERUSER = "tmail"
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Two tmail stacks (gunicorn workers, receiver, runner, each with a small pool), Dovecot
    # and the tests' own connections, with room to spare.
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


def _bin_dir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def ensure_postgres() -> Path:
    """The binaries' directory, installing Debian's ``postgresql`` first when missing; skip
    the test (with the reason) only when it cannot be installed."""
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    done = subprocess.run([str(REPO / "scripts" / "apt-ensure"), "postgresql"],
                          capture_output=True, text=True, timeout=900, check=False)
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed and scripts/apt-ensure could not install it: "
                    + (done.stderr.strip() or f"exit status {done.returncode}"))
    return bin_dir


def _server_user() -> str | None:
    """The account the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.skip("running as root and no unprivileged account (postgres, nobody) to run "
                "PostgreSQL as")


class PostgresServer:
    """One private cluster. ``stop()`` and ``start()`` take it down and up again on the same
    port and data, as an operator restarting PostgreSQL would (for outage tests)."""

    def __init__(self, bin_dir: Path, root: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.socket_dir = root
        self.log = root / "postgres.log"
        self.user = user
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self._databases = 0

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], user=self.user,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}"
                               f"{done.stderr}\n{self.log_text()}")
        return done

    def initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        pwfile.unlink()
        settings = {**SERVER_SETTINGS, "port": str(self.port),
                    "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/postgres.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start and wait until it accepts connections (``pg_ctl -w``)."""
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l",
                  str(self.log))

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends open sessions at once (what a restart does),
        ``immediate`` is a crash (no checkpoint)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    @property
    def running(self) -> bool:
        done = subprocess.run([str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data)],
                              user=self.user, capture_output=True, timeout=30, check=False)
        return done.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- clients ---------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of ``dbname`` (TCP on loopback, password auth)."""
        return (f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}"
                f"/{dbname}")

    def libpq(self, dbname: str) -> str:
        """The same database as a libpq connection string (psycopg, Dovecot's ``connect``)."""
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user={SUPERUSER} "
                f"password={self.password}")

    def create_database(self) -> str:
        """A new, empty database; its name. Fresh for each test: nothing leaks between them."""
        import psycopg

        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}_{secrets.token_hex(3)}"
        with psycopg.connect(self.libpq("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return "(no PostgreSQL log)"

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def start_postgres() -> PostgresServer:
    """A new cluster, started. Its directory is under /tmp, not pytest's tmp dirs (private
    to root, unreachable by the server's account), and short (Unix socket paths)."""
    bin_dir = ensure_postgres()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="tmail-pg-", dir="/tmp"))
    server = PostgresServer(bin_dir, root, user)
    try:
        server._chown(root)
        server.initdb()
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, removed (data and all) after the last test."""
    server = start_postgres()
    yield server
    server.destroy()
