"""``make bench``: tmail side by side with Postfix on this machine, in the same run.

    .venv/bin/python -m bench.run [--rounds 3] [--messages 1000] [--big 100000] [--no-write]

Every figure is the median of ``--rounds`` rounds; within a round tmail and Postfix run one
after the other on the same disk, with the same load generator (Postfix's smtp-source, 4 KiB
messages, one connection per session) and the same loopback sink (smtp-sink), so their ratio
means something on a shared, noisy machine where absolute figures do not. The table is
printed and written into docs/benchmarks.md. Needs root (Postfix's master runs as root);
installs Postfix through scripts/apt-ensure when it is missing. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import api_queue, postfix
from bench.smtp_tools import (
    SmtpSink,
    disk_limit,
    ensure_postfix_installed,
    free_port,
    run_smtp_source,
    wait_listening,
)

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"
RCPT = postfix.RCPT  # user@bench.test: relayed by tmail's accept runs, a mailbox for local
SESSIONS = (1, 5, 20)
PICKUPS = 30


# --- tmail's processes ----------------------------------------------------------------------

@dataclass
class Tmail:
    env: dict[str, str]
    port: int
    mailboxes: Path


@contextlib.contextmanager
def tmail(base: Path, *, runner: bool, route_port: int | None = None,
          mailbox: bool = False) -> Iterator[Tmail]:
    """The receiver (and the daemon runner) on a fresh data dir, as ``make run`` starts them."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TMAIL_DATA_DIR": str(base / "var"),
           "TMAIL_MAILBOXES_DIR": str(base / "mailboxes"), "TMAIL_HOSTNAME": "mx.bench.local",
           "TMAIL_SMTP_BIND": f"127.0.0.1:{port}", "TMAIL_RELAY_NETWORKS": "127.0.0.0/8",
           "PYTHONPATH": str(REPO)}
    if route_port is not None:
        env["TMAIL_ROUTES"] = f"*=127.0.0.1:{route_port}"
    if mailbox:
        from tmail.users import UserStore

        UserStore(base / "var" / "users.db", base / "mailboxes").create(
            RCPT, "bench-password", have_mailbox=True, mailbox_quota="")
    programs = ["smtp_receiver"] + (["queue_runner"] if runner else [])
    processes = []
    with contextlib.ExitStack() as logs:
        try:
            for program in programs:
                log = logs.enter_context(open(base / f"{program}.log", "wb"))
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", program], cwd=REPO, env=env,
                    stdout=subprocess.DEVNULL, stderr=log))
            wait_listening(port, 30, processes[0])
            yield Tmail(env, port, base / "mailboxes")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)


def maildir_new(mailboxes: Path) -> Path:
    local, _, domain = RCPT.partition("@")
    return mailboxes / domain[0] / domain / local[0] / local / "Maildir" / "new"


def wait_files(directory: Path, count: int, timeout: float = 120.0) -> float:
    """Wait for ``count`` files in ``directory``; the perf_counter time the last one arrived
    (from its mtime: Maildir deliveries are renamed in complete, so mtime is arrival)."""
    deadline = time.monotonic() + timeout
    while True:
        names = os.listdir(directory) if directory.exists() else []
        if len(names) >= count:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names)} of {count} files in {directory}")
        time.sleep(0.01)
    mtimes = sorted(os.stat(directory / name).st_mtime for name in names)
    return time.perf_counter() - (time.time() - mtimes[count - 1])


# --- rows 1-3 and 5: one round ----------------------------------------------------------------

def ours_accept(base: Path, messages: int) -> dict[int, float]:
    rates = {}
    with tmail(base, runner=False) as server:
        for sessions in SESSIONS:
            run_smtp_source(server.port, sessions, sessions, rcpt=RCPT)  # warm-up
            rates[sessions] = messages / run_smtp_source(server.port, messages, sessions,
                                                         rcpt=RCPT)
    return rates


def ours_relay(base: Path, messages: int) -> float:
    with SmtpSink() as sink, tmail(base, runner=True, route_port=sink.port) as server:
        run_smtp_source(server.port, 20, 20, rcpt=RCPT)
        sink.wait_for(20)
        started = time.perf_counter()
        run_smtp_source(server.port, messages, 20, rcpt=RCPT)
        finished = sink.wait_for(20 + messages)
    return messages / (finished - started)


def ours_local(base: Path, messages: int) -> float:
    with tmail(base, runner=True, mailbox=True) as server:
        new = maildir_new(server.mailboxes)
        run_smtp_source(server.port, 20, 20, rcpt=RCPT)
        wait_files(new, 20)
        started = time.perf_counter()
        run_smtp_source(server.port, messages, 20, rcpt=RCPT)
        finished = wait_files(new, 20 + messages)
    return messages / (finished - started)


def pickups(port: int, sink: SmtpSink, already: int) -> list[float]:
    """From the 250 of DATA to the sink having the message, one message at a time (ms),
    give or take the polling interval (0.5 ms)."""
    body = b"Subject: pickup\r\n\r\n" + b"x" * 78 + b"\r\n" * 50
    latencies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(PICKUPS):
            client.sendmail("from@bench.test", [RCPT], body)
            accepted = time.perf_counter()
            # Polled, not read from file times: those come from the kernel's coarse clock
            # (a few ms behind), as big as what is measured here.
            while sink.received() < already + n + 1:
                if time.perf_counter() - accepted > 30:
                    raise TimeoutError("no pickup within 30 s")
                time.sleep(0.0005)
            latencies.append((time.perf_counter() - accepted) * 1000)
    return latencies


def ours_pickup(base: Path) -> list[float]:
    with SmtpSink() as sink, tmail(base, runner=True, route_port=sink.port) as server:
        time.sleep(1.0)  # the daemon's start-up sweep
        return pickups(server.port, sink, 0)


def postfix_pickup(base: Path) -> list[float]:
    with SmtpSink() as sink, postfix.PrivatePostfix(base, "relay", sink.port) as instance:
        return pickups(instance.port, sink, 0)


def one_round(base: Path, messages: int) -> dict[str, float | list[float]]:
    figures: dict[str, float | list[float]] = {"disk": disk_limit(base, 500)}
    for sessions, rate in ours_accept(base / "ours-accept", messages).items():
        figures[f"ours accept {sessions}"] = rate
    for sessions in SESSIONS:
        figures[f"postfix accept {sessions}"] = postfix.accept_rate(
            base / f"pf-accept-{sessions}", messages, sessions)
    figures["ours relay"] = ours_relay(base / "ours-relay", messages)
    figures["postfix relay"] = postfix.relay_rate(base / "pf-relay", messages, 20)
    figures["ours local"] = ours_local(base / "ours-local", messages)
    figures["postfix local"] = postfix.virtual_rate(base / "pf-local", messages, 20)
    figures["ours pickup"] = ours_pickup(base / "ours-pickup")
    figures["postfix pickup"] = postfix_pickup(base / "pf-pickup")
    return figures


# --- row 4: the API with a big queue --------------------------------------------------------

def fill_users(data: Path, count: int) -> None:
    """``count`` users straight into users.db (one bcrypt per user would take minutes and
    is not what GET /users measures); the schema comes from the real store."""
    from tmail.users import UserStore

    store = UserStore(data / "users.db", data / "mailboxes")
    sample = store.create("template@bench.test", "bench-password", have_mailbox=True)
    conn = sqlite3.connect(data / "users.db")
    with conn:
        conn.executemany(
            "INSERT INTO users (login, passwd, dove_passwd, have_mailbox, home, domain)"
            " VALUES (?, ?, ?, 1, ?, 'bench.test')",
            [(f"u{n}@bench.test", sample.passwd, sample.dove_passwd,
              sample.home.replace("template", f"u{n}")) for n in range(count - 1)])
    conn.close()


def api_figures(base: Path, small: int, big: int, users: int) -> dict[str, dict[str, float]]:
    results = {}
    for count in (small, big):
        data = base / f"api-{count}"
        api_queue.fill(data / "queue", count)
        results[str(count)] = api_queue.measure(data, count)
    data = base / "api-users"
    fill_users(data, users)
    proc, url, session = api_queue.serve(data)
    try:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            listing = session.get(f"{url}/users", timeout=60)
            timings.append(time.perf_counter() - started)
            assert listing.status_code == 200 and len(listing.json()) == users
        results["users"] = {"median": statistics.median(timings)}
    finally:
        proc.terminate()
        proc.wait()
    return results


# --- the table --------------------------------------------------------------------------------

def median(rounds: list[dict[str, float | list[float]]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)  # type: ignore[arg-type]


def pooled(rounds: list[dict[str, float | list[float]]], key: str) -> list[float]:
    return sorted(v for r in rounds for v in r[key])  # type: ignore[union-attr]


def p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def table(rounds: list[dict[str, float | list[float]]], api: dict[str, dict[str, float]],
          args: argparse.Namespace) -> str:
    disk = median(rounds, "disk")
    rows = ["| # | figure | tmail | Postfix | tmail ÷ Postfix | disk limit | target |",
            "|---|---|---:|---:|---:|---:|---|"]

    def rate_row(number: str, label: str, ours: float, theirs: float, target: str,
                 with_disk: bool = False) -> None:
        disk_cell = f"{disk:.0f}/s ({ours / disk:.2f}×)" if with_disk else ""
        rows.append(f"| {number} | {label} | {ours:.0f} msg/s | {theirs:.0f} msg/s | "
                    f"**{ours / theirs:.2f}×** | {disk_cell} | {target} |")

    for sessions in SESSIONS:
        rate_row("1", f"accept, {sessions} session{'s' if sessions > 1 else ''}",
                 median(rounds, f"ours accept {sessions}"),
                 median(rounds, f"postfix accept {sessions}"),
                 "≥ 1.0× at 20 sessions" if sessions == 20 else "", with_disk=True)
    rate_row("2", "accept and deliver to smtp-sink, 20 sessions", median(rounds, "ours relay"),
             median(rounds, "postfix relay"), "≥ 1.0×")
    rate_row("3", f"{args.messages} messages into a Maildir (Postfix: virtual)",
             median(rounds, "ours local"), median(rounds, "postfix local"), "")
    small, big = api[str(args.small)], api[str(args.big)]
    rows.append(f"| 4 | `GET /queue/ID` at {args.small:,} / {args.big:,} records "
                f"(median, p99) | {small['median']:.1f} ms, {small['p99']:.1f} ms / "
                f"{big['median']:.1f} ms, {big['p99']:.1f} ms | | "
                f"{big['median'] / small['median']:.2f}× (big ÷ small) | | "
                f"< 5 ms, within 20 % |")
    rows.append(f"| 4 | `GET /queue` at {args.small:,} / {args.big:,} records (time, server "
                f"memory growth) | {small['listing']:.2f} s, {small['growth']:.1f} MiB / "
                f"{big['listing']:.2f} s, {big['growth']:.1f} MiB | | | | < 2 s, < 64 MiB |")
    rows.append(f"| 4 | `GET /queue/summary` / bulk hold at {args.big:,} records | "
                f"{big['summary']:.2f} s / {big['bulk']:.0f} records/s | | | | < 2 s |")
    rows.append(f"| 4 | `GET /users` with {args.users:,} users | "
                f"{api['users']['median'] * 1000:.0f} ms | | | | |")
    ours, theirs = pooled(rounds, "ours pickup"), pooled(rounds, "postfix pickup")
    rows.append(f"| 5 | pickup latency, 250 → sink (median, p99 of {len(ours)}) | "
                f"{statistics.median(ours):.1f} ms, {p99(ours):.1f} ms | "
                f"{statistics.median(theirs):.1f} ms, {p99(theirs):.1f} ms | "
                f"{statistics.median(ours) / max(statistics.median(theirs), 0.1):.1f}× | | "
                f"median < 100 ms |")
    return "\n".join(rows)


def write_docs(text: str) -> None:
    current = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    ensure_postfix_installed()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="tmail-bench-", dir="/var/tmp"))
    base.chmod(0o755)  # Postfix's unprivileged daemons must reach their spool below it
    rounds = []
    try:
        for number in range(args.rounds):
            round_dir = base / f"round-{number}"
            round_dir.mkdir()
            rounds.append(one_round(round_dir, args.messages))
            print(f"round {number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        api = api_figures(base, args.small, args.big, args.users)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    version = subprocess.run(["/usr/sbin/postconf", "-dh", "mail_version"],
                             capture_output=True, text=True, check=False).stdout.strip()
    text = "\n".join([
        f"Last run: {datetime.date.today()}, {os.cpu_count()} cores, Postfix {version}, "
        f"medians of {args.rounds} rounds, {time.monotonic() - started:.0f} s in all; load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        table(rounds, api, args),
    ])
    print(text)
    if not args.no_write:
        write_docs(text)
        print(f"written to {DOCS.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
