"""``make bench``: tmail side by side with Postfix on this machine, in the same run.

    .venv/bin/python -m bench.run [--rounds 3] [--messages 600] [--new-messages 300]
                                  [--big 100000] [--idle 60] [--no-write]

Every figure of rows 1-3 and 5 is the median of ``--rounds`` rounds; within a round tmail
and Postfix run one after the other on the same disk, with the same load generator
(Postfix's smtp-source, 4 KiB messages, both over reused connections and with one
connection per message) and the same loopback sink (smtp-sink), so their ratio means
something on a shared, noisy machine where absolute figures do not. Rows 6 (a big deferred
queue under the daemon runner, ``bench.deferred``) and 4 (the API, on that same queue)
follow, then row 7 (the receiver's memory under 50 big messages at once,
``bench.smtp_memory``), then the users store on SQLite and PostgreSQL (``bench.users_db``,
a private cluster of the tests' kind). The table is printed and written into
docs/benchmarks.md. Needs
root (Postfix's master runs as root); installs Postfix through scripts/apt-ensure when it is
missing. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import api_queue, deferred, postfix, smtp_memory, users_db
from bench.smtp_tools import (
    SmtpSink,
    create_cost,
    disk_limit,
    ensure_postfix_installed,
    run_smtp_source,
)
from bench.tmail_procs import REPO, tmail

DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"
RCPT = postfix.RCPT  # user@bench.test: relayed by tmail's accept runs, a mailbox for local
SESSIONS = (1, 5, 20)
PICKUPS = 30


# --- rows 1-3 and 5: one round ----------------------------------------------------------------

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


def ours_accept(base: Path, messages: int, *, keep_connection: bool) -> dict[int, float]:
    """Messages/s tmail's receiver accepts at each session count (no runner: acceptance only,
    as Postfix's discard transport), with one instance for all the counts."""
    rates = {}
    with tmail(base, runner=False) as server:
        for sessions in SESSIONS:
            run_smtp_source(server.port, sessions, sessions, rcpt=RCPT,
                            keep_connection=keep_connection)  # warm-up
            rates[sessions] = messages / run_smtp_source(
                server.port, messages, sessions, rcpt=RCPT, keep_connection=keep_connection)
    return rates


def ours_relay(base: Path, messages: int, levels: tuple[int, ...], *,
               keep_connection: bool, pickup: bool = False
               ) -> tuple[dict[int, float], list[float]]:
    """End-to-end messages/s through tmail (receiver and daemon runner) to the loopback sink:
    from the start of the sending until the sink has the last message, at each level; then,
    with ``pickup``, row 5's latencies on the same instance, its queue empty again."""
    rates, sent = {}, 0
    with SmtpSink() as sink, tmail(base, runner=True, route_port=sink.port) as server:
        for sessions in levels:
            run_smtp_source(server.port, sessions, sessions, rcpt=RCPT,
                            keep_connection=keep_connection)  # warm-up
            sent += sessions
            sink.wait_for(sent)
            started = time.perf_counter()
            run_smtp_source(server.port, messages, sessions, rcpt=RCPT,
                            keep_connection=keep_connection)
            sent += messages
            rates[sessions] = messages / (sink.wait_for(sent) - started)
        latencies = pickups(server.port, sink, sent) if pickup else []
    return rates, latencies


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


# The two workloads: smtp-source -d (each session sends its messages over one connection) and
# without -d (one connection per message, what a public MX mostly sees).
WORKLOADS = {"reused": True, "new": False}
RELAY_SESSIONS = {"reused": (20,), "new": SESSIONS}


def one_round(base: Path, messages: int, new_messages: int) -> dict[str, float | list[float]]:
    """Rows 1-3 and 5, tmail then Postfix for each workload, on the same disk. Each side
    serves all the session counts of a workload with one instance (started once, warmed up
    before each count), as a running MX would: starting a Postfix instance takes about 3 s."""
    figures: dict[str, float | list[float]] = {"disk": disk_limit(base, 500)}
    counts = {"reused": messages, "new": new_messages}
    for workload, keep in WORKLOADS.items():
        ours = ours_accept(base / f"ours-accept-{workload}", counts[workload],
                           keep_connection=keep)
        theirs = postfix.accept_rates(base / f"pf-accept-{workload}", counts[workload],
                                      SESSIONS, keep_connection=keep)
        for sessions in SESSIONS:
            figures[f"ours accept {workload} {sessions}"] = ours[sessions]
            figures[f"postfix accept {workload} {sessions}"] = theirs[sessions]
    for workload, keep in WORKLOADS.items():
        pickup = workload == "reused"  # row 5 on the instance of row 2a, its queue empty
        ours, ours_pickups = ours_relay(base / f"ours-relay-{workload}", counts[workload],
                                        RELAY_SESSIONS[workload], keep_connection=keep,
                                        pickup=pickup)
        theirs, their_pickups = postfix.relay_rates(
            base / f"pf-relay-{workload}", counts[workload], RELAY_SESSIONS[workload],
            keep_connection=keep, pickup=pickups if pickup else None)
        for sessions in RELAY_SESSIONS[workload]:
            figures[f"ours relay {workload} {sessions}"] = ours[sessions]
            figures[f"postfix relay {workload} {sessions}"] = theirs[sessions]
        if pickup:
            figures["ours pickup"], figures["postfix pickup"] = ours_pickups, their_pickups
    figures["ours local"] = ours_local(base / "ours-local", messages)
    figures["postfix local"] = postfix.virtual_rate(base / "pf-local", messages, 20)
    return figures


# --- row 6: a big deferred queue, then row 4 on the same queue ------------------------------

def queue_figures(base: Path, queues: Path, small: int, big: int, users: int, idle: float,
                  pickup_count: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Row 6 on a queue of ``big`` deferred records, then row 4 (the API) on that same queue
    and on one of ``small`` records filled alike: filling 100,000 records is the longest
    step of the run, so it is done once. Row 6 goes first: row 4's bulk hold changes 2 % of
    the records. Both queues go under ``queues`` (``--queue-dir``), ``users.db`` under
    ``base``."""
    deferred_figures = deferred.measure(queues / "deferred", big, idle, pickup_count)
    small_data = queues / "api-small"
    deferred.fill_deferred(small_data / "queue", small)
    api = {str(small): api_queue.measure(small_data, small),
           str(big): api_queue.measure(queues / "deferred" / "var", big)}
    api["users"] = users_figures(base / "api-users", users)
    return deferred_figures, api


# --- row 4: the API with a big queue --------------------------------------------------------

def fill_users(data: Path, count: int) -> None:
    """``count`` users straight into users.db (one bcrypt per user would take minutes and
    is not what GET /users measures); the schema comes from the real store."""
    from tmail.db import Database
    from tmail.users import UserStore

    database = Database(f"sqlite:///{data / 'users.db'}")
    database.migrate()
    store = UserStore(database, data / "mailboxes")
    sample = store.create("template@bench.test", "bench-password", have_mailbox=True)
    conn = sqlite3.connect(data / "users.db")
    with conn:
        conn.executemany(
            "INSERT INTO users (login, passwd, dove_passwd, have_mailbox, home, domain)"
            " VALUES (?, ?, ?, 1, ?, 'bench.test')",
            [(f"u{n}@bench.test", sample.passwd, sample.dove_passwd,
              sample.home.replace("template", f"u{n}")) for n in range(count - 1)])
    conn.close()


def users_figures(data: Path, users: int) -> dict[str, float]:
    """``GET /users`` with ``users`` users: the median of 5."""
    fill_users(data, users)
    proc, url, session = api_queue.serve(data)
    try:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            listing = session.get(f"{url}/users", timeout=60)
            timings.append(time.perf_counter() - started)
            assert listing.status_code == 200 and len(listing.json()) == users
        return {"median": statistics.median(timings)}
    finally:
        proc.terminate()
        proc.wait()


# --- row 7: the receiver's memory (bench/smtp_memory.py) -------------------------------------

def memory_figures() -> dict[str, float]:
    """Row 7: the receiver's RSS growth with 50 sessions each sending a 20 MiB message at once
    (:mod:`bench.smtp_memory`, which also checks every message is queued byte for byte)."""
    return smtp_memory.measure(50, 20)


# --- the table --------------------------------------------------------------------------------

def median(rounds: list[dict[str, float | list[float]]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)  # type: ignore[arg-type]


def pooled(rounds: list[dict[str, float | list[float]]], key: str) -> list[float]:
    return sorted(v for r in rounds for v in r[key])  # type: ignore[union-attr]


def p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def table(rounds: list[dict[str, float | list[float]]], api: dict[str, dict[str, float]],
          queue: dict[str, float], memory: dict[str, float] | None,
          args: argparse.Namespace) -> str:
    disk = median(rounds, "disk")
    rows = ["| # | figure | tmail | Postfix | tmail ÷ Postfix | disk limit | target |",
            "|---|---|---:|---:|---:|---:|---|"]

    def rate_row(number: str, label: str, key: str, target: str,
                 with_disk: bool = False) -> None:
        ours, theirs = median(rounds, f"ours {key}"), median(rounds, f"postfix {key}")
        disk_cell = f"{disk:.0f}/s ({ours / disk:.2f}×)" if with_disk else ""
        rows.append(f"| {number} | {label} | {ours:.0f} msg/s | {theirs:.0f} msg/s | "
                    f"**{ours / theirs:.2f}×** | {disk_cell} | {target} |")

    def sessions_label(sessions: int) -> str:
        return f"{sessions} session{'s' if sessions > 1 else ''}"

    for sessions in SESSIONS:
        rate_row("1a", f"accept, reused connections, {sessions_label(sessions)}",
                 f"accept reused {sessions}", "≥ 1.0×", with_disk=True)
    for sessions in SESSIONS:
        rate_row("1b", f"accept, one message per connection, {sessions_label(sessions)}",
                 f"accept new {sessions}", "≥ 0.6×" if sessions == 1 else "≥ 0.8×",
                 with_disk=True)
    rate_row("2a", "accept and deliver to smtp-sink, reused connections, 20 sessions",
             "relay reused 20", "≥ 1.0×")
    for sessions in SESSIONS:
        rate_row("2b", "accept and deliver to smtp-sink, one message per connection, "
                 f"{sessions_label(sessions)}", f"relay new {sessions}",
                 "≥ 1.0×" if sessions == 20 else "")
    rate_row("3", f"{args.messages} messages into a Maildir (Postfix: virtual)", "local", "")
    small, big = api[str(args.small)], api[str(args.big)]
    rows.append(f"| 4 | `GET /queue/ID` at {args.small:,} / {args.big:,} records "
                f"(median, p99) | {small['median']:.1f} ms, {small['p99']:.1f} ms / "
                f"{big['median']:.1f} ms, {big['p99']:.1f} ms | | "
                f"{big['median'] / small['median']:.2f}× (big ÷ small) | | "
                f"< 5 ms, within 20 % |")
    rows.append(f"| 4 | `GET /queue` at {args.small:,} / {args.big:,} records (time, server "
                f"memory growth) | {small['listing']:.2f} s, {small['growth']:.1f} MiB / "
                f"{big['listing']:.2f} s, {big['growth']:.1f} MiB | | | | < 2 s, < 64 MiB |")
    rows.append(f"| 4 | `GET /queue/summary` / bulk hold at {args.big:,} records (queues on "
                f"{fs_type(Path(args.queue_dir))}) | "
                f"{big['summary']:.2f} s / {big['bulk']:.0f} records/s | | | | < 2 s |")
    rows.append(f"| 4 | `GET /users` with {args.users:,} users | "
                f"{api['users']['median'] * 1000:.0f} ms | | | | |")
    ours, theirs = pooled(rounds, "ours pickup"), pooled(rounds, "postfix pickup")
    rows.append(f"| 5 | pickup latency, 250 → sink (median, p99 of {len(ours)}) | "
                f"{statistics.median(ours):.1f} ms, {p99(ours):.1f} ms | "
                f"{statistics.median(theirs):.1f} ms, {p99(theirs):.1f} ms | "
                f"{statistics.median(ours) / max(statistics.median(theirs), 0.1):.1f}× | | "
                f"median < 100 ms |")
    records = f"{queue['records']:,.0f} deferred records"
    rows.append(f"| 6 | {records}: pickup latency of new mail, enqueue → sink (median, p99 "
                f"of {args.deferred_pickups}) | {queue['pickup median']:.1f} ms, "
                f"{queue['pickup p99']:.1f} ms | | "
                f"{queue['pickup median'] / statistics.median(ours):.1f}× (÷ row 5) | | "
                f"median < 100 ms |")
    quiet = "" if queue["quiet"] else ", never idle"
    rows.append(f"| 6 | {records}: daemon CPU while nothing is due ({queue['workers']:.0f} "
                f"workers, {queue['idle seconds']:.0f} s{quiet}) | "
                f"{queue['idle cpu']:.1f} % of one core | | | | < 5 % |")
    rows.append(f"| 6 | {records}: first delivery after the daemon starts | "
                f"{queue['first delivery']:.1f} s | | | | |")
    if memory is None:
        rows.append("| 7 | receiver RSS growth, 50 sessions × 20 MiB at once | not measured "
                    "| | | | < 256 MiB |")
    else:
        rows.append(f"| 7 | receiver RSS growth, 50 sessions × 20 MiB at once "
                    f"({memory['intact']:.0f}/50 queued byte for byte, "
                    f"{memory['seconds']:.0f} s) | {memory['growth']:.0f} MiB | | | | "
                    f"< 256 MiB |")
    return "\n".join(rows)


def fs_type(path: Path) -> str:
    """The file system type of the mount ``path`` is on (from /proc/mounts)."""
    best, kind = "", "?"
    target = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1]
        if (target == point or target.startswith(point.rstrip("/") + "/")) and (
            len(point) > len(best)
        ):
            best, kind = point, fields[2]
    return kind


def write_docs(text: str) -> None:
    current = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def remove_tree(base: Path) -> None:
    """``rm -rf`` of the run's directory, one process per subtree at once (the queue's
    ``records`` and ``messages`` apart): removing 300,000 files is kernel work, and one
    process would use one core of two."""
    subtrees = []
    for child in sorted(base.iterdir()):
        queue = child / "var" / "queue"
        subtrees += sorted(queue.iterdir()) if queue.is_dir() else [child]
    removers = [subprocess.Popen(["rm", "-rf", "--one-file-system", str(path)])
                for path in subtrees]
    for remover in removers:
        remover.wait()
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


class LoadWatch:
    """The highest 1-minute load average seen during the run (sampled every 5 s): the other
    work on a shared machine is part of what the figures mean."""

    def __init__(self) -> None:
        self.peak = os.getloadavg()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(5.0):
            self.peak = max(self.peak, os.getloadavg()[0])

    def stop(self) -> float:
        self._stop.set()
        return self.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=600,
                        help="per figure of rows 1a, 2a and 3 (reused connections)")
    parser.add_argument("--new-messages", type=int, default=300,
                        help="per figure of rows 1b and 2b (one message per connection)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000,
                        help="records of the deferred queue (rows 4 and 6)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds of row 6's CPU window")
    parser.add_argument("--deferred-pickups", type=int, default=50)
    parser.add_argument("--queue-dir", default="/dev/shm",
                        help="where rows 4 and 6 build their queues (tmpfs: see "
                             "docs/benchmarks.md)")
    parser.add_argument("--dir", default="/var/spool",
                        help="where the servers' queues go (the disk; a mail queue's usual "
                             "place)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    ensure_postfix_installed()
    started, load_before, load = time.monotonic(), os.getloadavg()[0], LoadWatch()
    base = Path(tempfile.mkdtemp(prefix="tmail-bench-", dir=args.dir))
    base.chmod(0o755)  # Postfix's unprivileged daemons must reach their spool below it
    creating = create_cost(base)
    rounds, times = [], {}
    try:
        # The big queue first and every removal last: on this disk (ext4 without a
        # journal) files removed slow down every file created in the next minutes.
        queues = Path(tempfile.mkdtemp(prefix="tmail-bench-queues-", dir=args.queue_dir))
        queues.chmod(0o755)
        try:
            queue, api = queue_figures(base, queues, args.small, args.big, args.users,
                                       args.idle, args.deferred_pickups)
        finally:
            mark = time.monotonic()
            remove_tree(queues)
            times["queue cleanup"] = time.monotonic() - mark
        times["queue"] = time.monotonic() - started
        print(f"rows 4 and 6 done ({times['queue']:.0f} s)", file=sys.stderr, flush=True)
        for number in range(args.rounds):
            round_dir = base / f"round-{number}"
            round_dir.mkdir()
            rounds.append(one_round(round_dir, args.messages, args.new_messages))
            print(f"round {number + 1}/{args.rounds} done "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        times["rounds"] = time.monotonic() - started - times["queue"]
        mark = time.monotonic()
        memory = memory_figures()
        times["memory"] = time.monotonic() - mark
        mark = time.monotonic()
        users = users_db.section(users=args.users)  # both engines (issue 14)
        times["users"] = time.monotonic() - mark
    finally:
        mark = time.monotonic()
        remove_tree(base)
        times["cleanup"] = time.monotonic() - mark
    version = subprocess.run(["/usr/sbin/postconf", "-dh", "mail_version"],
                             capture_output=True, text=True, check=False).stdout.strip()
    text = "\n".join([
        f"Last run: {datetime.date.today()}, {os.cpu_count()} cores, Postfix {version}, "
        f"medians of {args.rounds} rounds, {time.monotonic() - started:.0f} s in all (rows 4 "
        f"and 6 {times['queue']:.0f} s, of which {queue['fill']:.0f} s filling the queue and "
        f"{times['queue cleanup']:.0f} s removing it; "
        f"rounds {times['rounds']:.0f} s; row 7 {times['memory']:.0f} s; users store on "
        f"SQLite and PostgreSQL {times['users']:.0f} s; removing the files "
        f"{times['cleanup']:.0f} s); load average {load_before:.1f} before, up to "
        f"{load.stop():.1f} during, {os.getloadavg()[0]:.1f} after; queues under "
        f"{args.dir}, where creating a file took {creating * 1e6:.0f} µs before the run.",
        "",
        table(rounds, api, queue, memory, args),
        "",
        users,
    ])
    print(text)
    if not args.no_write:
        write_docs(text)
        print(f"written to {DOCS.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
