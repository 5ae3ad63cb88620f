"""Accept rate of the SMTP receiver (runner stopped), against the disk's fsync limit.

    .venv/bin/python bench/smtp_accept.py [--messages 200] [--sessions 1 5 20]

Starts ``python -m smtp_receiver`` in a temp dir on loopback, sends 4 KiB messages over N
concurrent smtplib sessions, and prints messages/s with the ratio to the two-file
fsync+rename rate of the same disk, measured in the same run. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.enqueue import BODY, disk_two_files  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def blast(port: int, sessions: int, per_session: int) -> float:
    def session() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for _ in range(per_session):
                client.sendmail("bench@client.test", ["rcpt@remote.test"], BODY)

    threads = [threading.Thread(target=session) for _ in range(sessions)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sessions * per_session / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="per concurrency level")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tmail-accept-"))
    port = free_port()
    env = {**os.environ, "TMAIL_DATA_DIR": str(base / "var"),
           "TMAIL_MAILBOXES_DIR": str(base / "mb"), "TMAIL_SMTP_BIND": f"127.0.0.1:{port}",
           "TMAIL_RELAY_NETWORKS": "127.0.0.0/8", "TMAIL_HOSTNAME": "bench.local"}
    receiver = subprocess.Popen([sys.executable, "-m", "smtp_receiver"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the receiver did not start")
            time.sleep(0.1)
        disk_dir = base / "disk"
        disk_dir.mkdir()
        started = time.perf_counter()
        disk_two_files(disk_dir, args.messages)
        disk = args.messages / (time.perf_counter() - started)
        print(f"disk limit (raw + JSON, fsync+rename each): {disk:.0f} msg/s")
        print(f"{'sessions':>8} {'msg/s':>8} {'vs disk':>8}")
        for sessions in args.sessions:
            rate = blast(port, sessions, max(1, args.messages // sessions))
            print(f"{sessions:>8} {rate:8.0f} {rate / disk:7.2f}x")
    finally:
        receiver.terminate()
        receiver.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
