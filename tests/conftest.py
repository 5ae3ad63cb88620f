"""Shared fixtures: a real gunicorn over real HTTPS on loopback, with a temp data dir."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tmail import config as tmail_config
from tmail.config import Config
from tmail.db import Database

REPO = Path(__file__).resolve().parent.parent

# The session's private PostgreSQL server (``postgres``, tests/postgres.py); the web console
# in a real browser (``browser``, ``console_stack``: tests/browser.py).
pytest_plugins = ("tests.postgres", "tests.browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tmail_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a tmail process working in ``data_dir`` (nothing in the repo)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMAIL_")}
    env.update(
        TMAIL_DATA_DIR=str(data_dir / "var"),
        TMAIL_MAILBOXES_DIR=str(data_dir / "mailboxes"),
        TMAIL_HOSTNAME="mx.test.local",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


@dataclass
class ApiServer:
    base_url: str
    env: dict[str, str]
    config: Config
    cert: Path
    session: requests.Session
    process: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return self.base_url + path


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def api_session(cert: Path, auth: tuple[str, str] | None = ("admin", "admin")) -> requests.Session:
    """A client of the API as every well-behaved HTTP/1.1 client is: it reuses connections
    and sends an idempotent request (GET, PUT, DELETE) again, once or twice, when the reused
    connection closes without an answer (RFC 9112 section 9.3.1). The server closes a
    connection idle for its keep-alive timeout, and a request sent at that instant is lost
    (see gunicorn.conf.py): without these retries, that is the "TLS EOF" of a long test run.
    POST is not resent: the client cannot know that the server never read it.
    """
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override ``verify``; no proxies
    session.auth = auth
    session.verify = str(cert)
    retry = Retry(total=2, connect=2, read=2, status=0, other=0,
                  allowed_methods=Retry.DEFAULT_ALLOWED_METHODS, raise_on_status=False)
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def start_api(data_dir: Path, **extra: str) -> ApiServer:
    port = free_port()
    env = tmail_env(data_dir, TMAIL_API_BIND=f"127.0.0.1:{port}", **extra)
    with open(data_dir / "gunicorn.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    config = tmail_config.load(env)
    session = api_session(config.tls_cert_path)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail("gunicorn exited:\n" + (data_dir / "gunicorn.log").read_text())
        try:
            return session.get(f"https://127.0.0.1:{port}/ping", timeout=2).ok
        except (requests.ConnectionError, OSError):
            return False

    if not wait_until(ready):
        stop(process)
        pytest.fail("gunicorn did not answer:\n" + (data_dir / "gunicorn.log").read_text())
    return ApiServer(f"https://127.0.0.1:{port}", env, config, config.tls_cert_path, session,
                     process)


def child_pids(parent: int) -> list[int]:
    """The processes ``parent`` started (a supervisor's workers)."""
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One real gunicorn (2 workers, TLS) for the whole session, on the default SQLite."""
    server = start_api(tmp_path_factory.mktemp("api"))
    yield server
    stop(server.process)


@pytest.fixture(scope="session")
def api(sqlite_api: ApiServer) -> ApiServer:
    """The session's API (SQLite); tests of the SQL layer use :func:`engine_api`."""
    return sqlite_api


# --- the SQL engines: tests that take ``engine`` (or a fixture built on it) run on each -------

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The database engine of a test parametrized over both (``TMAIL_DATABASE_URL``'s)."""
    return request.param


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database for one test: a file in its tmp dir, or a database created for
    it on the session's PostgreSQL server (tests/postgres.py)."""
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'users.db'}"
    postgres = request.getfixturevalue("postgres")
    return postgres.url(postgres.create_database())


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The test's database, migrated; its pool closed after the test."""
    db = Database(database_url)
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def engine_api(engine: str, request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real API on ``engine``: the session's SQLite one, or one on a PostgreSQL database
    of its own (``TMAIL_DATABASE_URL``)."""
    if engine == "sqlite":
        yield request.getfixturevalue("sqlite_api")
        return
    postgres = request.getfixturevalue("postgres")
    server = start_api(tmp_path_factory.mktemp("api-pg"),
                       TMAIL_DATABASE_URL=postgres.url(postgres.create_database()))
    yield server
    stop(server.process)
