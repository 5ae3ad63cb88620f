"""The users store on each engine: the receiver's AUTH look-up, and ``GET /users``.

    .venv/bin/python -m bench.users_db [--users 10000] [--lookups 2000] [--auths 30]

For SQLite (the default, ``<data dir>/users.db``) and PostgreSQL (a private cluster on
loopback, the one the tests use: ``tests/postgres.py``), with ``--users`` users in the
database:

* AUTH look-up: :meth:`UserStore.get`, the query the receiver's AUTH makes (through
  ``authenticate``) before it checks the password, for random logins of the table, one at a
  time as a receiver thread makes them (median and p99, in ms). ``authenticate`` itself
  (that look-up plus one bcrypt) is given too: what an SMTP client waits for.
* ``GET /users`` through the real gunicorn over HTTPS (median of 5).

Users are inserted in bulk through the store's own table (one bcrypt per user would take
minutes and measures nothing here); one of them is created by the store, and the others
reuse its hashes. The PostgreSQL cluster is the tests' (fsync off): reads, which are all
that is measured, do not depend on it. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import api_queue  # noqa: E402
from tmail import config as tmail_config  # noqa: E402
from tmail.users import UserStore, open_store  # noqa: E402
from tmail.users_table import users as users_table  # noqa: E402

PASSWORD = "bench-password"
DOMAIN = "bench.test"


def fill(store: UserStore, count: int) -> list[str]:
    """``count`` users with a mailbox; their logins."""
    sample = store.create(f"u0@{DOMAIN}", PASSWORD, have_mailbox=True)
    logins = [f"u{n}@{DOMAIN}" for n in range(count)]
    rows = [{"login": login, "login_key": login, "passwd": sample.passwd,
             "dove_passwd": sample.dove_passwd, "have_mailbox": 1, "domain": DOMAIN,
             "mailbox_quota": sample.mailbox_quota,
             "home": sample.home.replace("/u0", f"/u{n}")}
            for n, login in enumerate(logins) if n]
    with store.database.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(users_table.insert(), rows[start:start + 1000])
    return logins


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def lookups(store: UserStore, logins: list[str], count: int, auths: int) -> dict[str, float]:
    rng = random.Random(14)
    for login in rng.sample(logins, min(50, len(logins))):  # warm the pool and the caches
        store.get(login)
    timings = []
    for login in rng.choices(logins, k=count):
        started = time.perf_counter()
        user = store.get(login)
        timings.append((time.perf_counter() - started) * 1000)
        assert user is not None and user.login == login
    auth_timings = []
    for login in rng.choices(logins, k=auths):
        started = time.perf_counter()
        user = store.authenticate(login, PASSWORD)
        auth_timings.append((time.perf_counter() - started) * 1000)
        assert user is not None
    return {"lookup median": statistics.median(timings),
            "lookup p99": percentile(timings, 0.99),
            "auth median": statistics.median(auth_timings)}


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` for the processes started inside (api_queue.serve
    passes its own environment on)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def list_users(data: Path, count: int, url: str) -> float:
    """Median of 5 ``GET /users`` (seconds), each checked to hold every user."""
    with environment(TMAIL_DATABASE_URL=url):
        proc, base, session = api_queue.serve(data)
    try:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            listing = session.get(f"{base}/users", timeout=120)
            timings.append(time.perf_counter() - started)
            assert listing.status_code == 200, listing.text[:200]
            assert len(listing.json()) == count
        return statistics.median(timings)
    finally:
        proc.terminate()
        proc.wait()


def measure_engine(data: Path, url: str, args: argparse.Namespace) -> dict[str, float]:
    config = tmail_config.load({"TMAIL_DATA_DIR": str(data),
                                "TMAIL_MAILBOXES_DIR": str(data / "mb"),
                                "TMAIL_DATABASE_URL": url})
    store = open_store(config)
    try:
        logins = fill(store, args.users)
        figures = lookups(store, logins, args.lookups, args.auths)
    finally:
        store.database.dispose()
    figures["list"] = list_users(data, args.users, url)
    return figures


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Figures per engine: ``sqlite`` and ``postgresql``."""
    from tests.postgres import start_postgres

    base = Path(tempfile.mkdtemp(prefix="tmail-bench-users-"))
    server = start_postgres()
    try:
        results = {"sqlite": measure_engine(base / "sqlite", "", args)}
        results["postgresql"] = measure_engine(base / "postgresql",
                                               server.url(server.create_database()), args)
        return results
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


def table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """The figures as a Markdown table: one column per engine, and their ratio."""
    lite, pg = results["sqlite"], results["postgresql"]
    lines = ["| figure | SQLite | PostgreSQL | PostgreSQL ÷ SQLite |", "|---|---:|---:|---:|"]
    shown = [
        (f"AUTH look-up (`UserStore.get`), {args.users:,} users: median, p99 of "
         f"{args.lookups:,}", "lookup median",
         lambda f: f"{f['lookup median']:.2f} ms, {f['lookup p99']:.2f} ms"),
        (f"AUTH check (`authenticate`: look-up + bcrypt): median of {args.auths}",
         "auth median", lambda f: f"{f['auth median']:.0f} ms"),
        (f"`GET /users` with {args.users:,} users over HTTPS: median of 5", "list",
         lambda f: f"{f['list'] * 1000:.0f} ms"),
    ]
    for label, key, cell in shown:
        lines.append(f"| {label} | {cell(lite)} | {cell(pg)} | {pg[key] / lite[key]:.2f}× |")
    return "\n".join(lines)


def section(**options: int) -> str:
    """The whole measurement as text, for ``bench/run.py`` (``options``: as on the command
    line, e.g. ``users=10000``)."""
    args = parser().parse_args([])
    for name, value in options.items():
        setattr(args, name, value)
    load = os.getloadavg()[0]
    results = measure(args)
    return (f"Users store on each engine (`python -m bench.users_db`); load average {load:.1f} "
            f"before, {os.getloadavg()[0]:.1f} after.\n\n{table(results, args)}")


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parsed.add_argument("--users", type=int, default=10_000)
    parsed.add_argument("--lookups", type=int, default=2000)
    parsed.add_argument("--auths", type=int, default=30)
    return parsed


def main() -> int:
    args = parser().parse_args()
    print(section(**vars(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
