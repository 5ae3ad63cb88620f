"""The receiver's memory while many large messages arrive at once.

    .venv/bin/python -m bench.smtp_memory [--sessions 50] [--mib 20]

A real receiver process (one worker) gets ``--sessions`` SMTP sessions that all send a
``--mib`` MiB message at the same time. The figure is the growth of the receiver's resident
memory: its peak (``VmHWM``) during the run less its size before, against a target of 256
MiB; streaming DATA to a spool keeps it near sessions x (read buffer + header block), where
holding each message in memory needs sessions x size (1 GiB for the defaults) or twice that.
Then every message is checked in the queue, byte for byte (SHA-1 of what was sent, less
dot-stuffing, against the queued file less our Received: header).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tmail import config as tmail_config  # noqa: E402
from tmail.queue import QueueStore  # noqa: E402

TARGET_MIB = 256
# One MiB of 78-octet lines, every 500th dot-stuffed on the wire as a real client does.
_LINES = [(b"." if n % 500 == 0 else b"") + b"%07d " % n + b"y" * (74 - 8) + b"\r\n"
          for n in range(13_443)]
CONTENT_BLOCK = b"".join(_LINES)
WIRE_BLOCK = b"".join(b"." + line if line.startswith(b".") else line for line in _LINES)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start_receiver(data: Path) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMAIL_")}
    env.update(TMAIL_DATA_DIR=str(data / "var"), TMAIL_MAILBOXES_DIR=str(data / "mailboxes"),
               TMAIL_HOSTNAME="mx.bench.local", TMAIL_SMTP_BIND=f"127.0.0.1:{port}",
               TMAIL_SMTP_PROCESSES="1", TMAIL_RELAY_NETWORKS="127.0.0.0/8",
               PYTHONPATH=str(REPO))
    log = open(data / "receiver.log", "wb")  # noqa: SIM115 (kept open for the process)
    process = subprocess.Popen([sys.executable, "-m", "smtp_receiver"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port, env
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the receiver did not start:\n" + (data / "receiver.log").read_text())


class Session(threading.Thread):
    """One client: everything up to DATA, then waits for the others, then sends."""

    def __init__(self, port: int, index: int, mib: int, barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.port, self.index, self.mib, self.barrier = port, index, mib, barrier
        self.digest = hashlib.sha1()
        self.reply = b""

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=600) as sock:
            stream = sock.makefile("rb")

            def command(line: bytes) -> bytes:
                if line:
                    sock.sendall(line + b"\r\n")
                reply = stream.readline()
                while reply[3:4] == b"-":
                    reply = stream.readline()
                return reply

            command(b"")
            for line in (b"EHLO bench.test", b"MAIL FROM:<bench@bench.test>",
                         b"RCPT TO:<sink@remote.example>", b"DATA"):
                command(line)
            header = b"Subject: memory bench %d\r\n\r\n" % self.index
            self.digest.update(header)
            self.barrier.wait()
            sock.sendall(header)
            for _ in range(self.mib):
                sock.sendall(WIRE_BLOCK)
                self.digest.update(CONTENT_BLOCK)
            self.reply = command(b".")
            command(b"QUIT")


def queued_digests(store: QueueStore) -> dict[str, str]:
    """Uuid -> SHA-1 of the queued message less our Received: header (3 folded lines)."""
    digests = {}
    for record in store.iter_records():
        path = store.layout.message_raw(record.uuid)
        sha = hashlib.sha1()
        with open(path, "rb") as raw:
            for _ in range(3):
                raw.readline()
            while chunk := raw.read(1 << 20):
                sha.update(chunk)
        digests[record.uuid] = sha.hexdigest()
    return digests


def measure(sessions_count: int = 50, mib: int = 20) -> dict[str, float]:
    """Run the load once: RSS before and peak (MiB), seconds, messages accepted and intact."""
    with tempfile.TemporaryDirectory(prefix="tmail-smtp-memory-") as tmp:
        process, port, env = start_receiver(Path(tmp))
        try:
            before = status_kib(process.pid, "VmRSS")
            barrier = threading.Barrier(sessions_count)
            sessions = [Session(port, n, mib, barrier) for n in range(sessions_count)]
            started = time.monotonic()
            for session in sessions:
                session.start()
            for session in sessions:
                session.join()
            elapsed = time.monotonic() - started
            peak = status_kib(process.pid, "VmHWM")
            store = QueueStore(tmail_config.load(env).queue_dir)
            queued = queued_digests(store)
        finally:
            process.terminate()
            process.wait(30)
    accepted = [s for s in sessions if s.reply.startswith(b"250")]
    intact = sum(1 for s in accepted
                 if queued.get(s.reply.split()[-1].decode()) == s.digest.hexdigest())
    return {"sessions": sessions_count, "mib": mib, "before": before / 1024,
            "peak": peak / 1024, "growth": (peak - before) / 1024, "seconds": elapsed,
            "accepted": len(accepted), "intact": intact}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--mib", type=int, default=20)
    args = parser.parse_args(argv)
    m = measure(args.sessions, args.mib)
    total = args.sessions * args.mib
    print(f"{args.sessions} sessions x {args.mib} MiB at once ({total} MiB) in "
          f"{m['seconds']:.1f} s")
    print(f"receiver RSS before {m['before']:.0f} MiB, peak {m['peak']:.0f} MiB: "
          f"growth {m['growth']:.0f} MiB (target < {TARGET_MIB}; {m['growth'] / total:.3f} "
          "of the data)")
    print(f"accepted {m['accepted']:.0f}/{args.sessions}, queued byte for byte "
          f"{m['intact']:.0f}/{args.sessions}")
    ok = m["growth"] < TARGET_MIB and m["intact"] == args.sessions
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
