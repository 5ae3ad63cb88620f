"""What a daemon runner costs while retries fall due, and how punctual they are.

    .venv/bin/python -m bench.runner_retries [--messages 3000] [--spread 15] [--baseline REV]

The daemon (2 workers, default sweep interval) runs against a loopback sink that defers the
first attempt of each message (451) and accepts the second. Messages are queued steadily over
``--spread`` seconds, so their retries (``--backoff`` seconds later) fall due steadily over
the same span. Printed, for this tree and for ``--baseline`` (a git revision, extracted to a
temp dir): the daemon's CPU seconds while the retries are due, per retry, and the retries'
lateness (attempt minus ``NextDeliveryScheduledAt``, median and worst). Before the per-worker
schedule, every due time made every worker re-read the whole queue. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller

REPO = Path(__file__).resolve().parent.parent


class DeferFirst:
    """451 to the first DATA of each message, 250 to the next one; records when."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.accepted: dict[bytes, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        content = getattr(envelope, "original_content", b"") or b""
        key = content.partition(b"Message-ID: <")[2].partition(b">")[0]
        with self.lock:
            if key not in self.seen:
                self.seen.add(key)
                return "451 4.3.0 not yet"
            self.accepted[key] = time.time()
        await asyncio.sleep(0)
        return "250 2.0.0 Ok"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children still running."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    total = 0.0
    for each in [pid, *map(int, found.stdout.split())]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def one_run(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(tree))
    from tmail import config as tmail_config  # the tree under test, imported now
    from tmail.queue import QueueStore

    handler = DeferFirst()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    work = Path(tempfile.mkdtemp(prefix="tmail-bench-retries-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMAIL_")}
    env.update(TMAIL_DATA_DIR=str(work / "var"), TMAIL_MAILBOXES_DIR=str(work / "mb"),
               TMAIL_HOSTNAME="mx.bench.local", TMAIL_ROUTES=f"*=127.0.0.1:{port}",
               TMAIL_RUNNER_PROCESSES="2", TMAIL_RETRY_MIN_BACKOFF=str(args.backoff),
               TMAIL_RETRY_MAX_BACKOFF=str(args.backoff), PYTHONPATH=str(tree))
    store = QueueStore(tmail_config.load(env).queue_dir)
    with open(work / "runner.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "queue_runner"], cwd=tree, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        due: dict[bytes, float] = {}
        started = time.time()
        for n in range(args.messages):
            key = f"b{n}@bench.local".encode()
            raw = b"From: s@bench.local\r\nMessage-ID: <" + key + b">\r\n\r\nbody\r\n"
            store.enqueue(raw, "s@bench.local", [f"r{n}@remote.bench"])
            pause = started + (n + 1) * args.spread / args.messages - time.time()
            if pause > 0:
                time.sleep(pause)
        # Every first attempt is done and deferred: read each record's due time.
        deadline = time.time() + 60
        while len(due) < args.messages and time.time() < deadline:
            for record in store.iter_records():
                if record.delivery_failed_count == 1:
                    due.setdefault(record.message_id.strip("<>").encode(),
                                   record.next_delivery_at.timestamp())
            time.sleep(0.2)
        cpu_before = cpu_seconds(daemon.pid)
        deadline = time.time() + args.backoff + args.spread + 90
        while len(handler.accepted) < args.messages and time.time() < deadline:
            time.sleep(0.2)
        cpu = cpu_seconds(daemon.pid) - cpu_before
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        controller.stop()
        sys.path.remove(str(tree))
        for name in [m for m in sys.modules if m == "tmail" or m.startswith("tmail.")]:
            del sys.modules[name]
    late = sorted(handler.accepted[k] - due[k] for k in handler.accepted if k in due)
    return {"retried": len(handler.accepted), "cpu": cpu,
            "cpu_per_retry_ms": 1000 * cpu / max(1, len(handler.accepted)),
            "late_median": statistics.median(late) if late else float("nan"),
            "late_worst": late[-1] if late else float("nan")}


def extract(revision: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="tmail-baseline-"))
    archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--spread", type=float, default=15.0)
    # past the 60 s sweep: the old daemon learns the due times at that sweep, then re-reads
    # the whole queue at each of them
    parser.add_argument("--backoff", type=int, default=75)
    parser.add_argument("--baseline", default="", help="a git revision to compare with")
    args = parser.parse_args()
    runs = {"this tree": one_run(REPO, args)}
    if args.baseline:
        runs[args.baseline] = one_run(extract(args.baseline), args)
    print(f"{'':>12} {'retried':>8} {'cpu s':>7} {'ms/retry':>9} {'late med':>9} "
          f"{'late max':>9}")
    for name, r in runs.items():
        print(f"{name:>12} {r['retried']:>8} {r['cpu']:>7.1f} {r['cpu_per_retry_ms']:>9.2f} "
              f"{r['late_median']:>9.3f} {r['late_worst']:>9.3f}")
    if args.baseline:
        ours, base = runs["this tree"], runs[args.baseline]
        print(f"CPU per retry: baseline / this tree = "
              f"{base['cpu_per_retry_ms'] / max(ours['cpu_per_retry_ms'], 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
