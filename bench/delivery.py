"""Delivery rate to a loopback SMTP sink, and the daemon's pickup latency.

    .venv/bin/python bench/delivery.py [--messages 1000] [--pickups 50]

Reference in the same run: a plain smtplib client sending the same messages to the same sink
over one connection (what the sink and loopback allow). Then ``python -m queue_runner --once``
delivers the same number of queued messages, and the daemon's pickup latency (enqueue to the
sink having the message) is measured over single messages. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.enqueue import BODY  # noqa: E402
from tests.sink import Sink  # noqa: E402
from tmail.queue import QueueStore  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--pickups", type=int, default=50)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tmail-delivery-"))
    try:
        with Sink() as sink:
            env = {**os.environ, "TMAIL_DATA_DIR": str(base / "var"),
                   "TMAIL_MAILBOXES_DIR": str(base / "mb"), "TMAIL_ROUTES": sink.route,
                   "TMAIL_HOSTNAME": "bench.local"}
            started = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", sink.port) as client:
                for n in range(args.messages):
                    client.sendmail("a@bench.local", [f"r{n}@remote.test"], BODY)
            reference = args.messages / (time.perf_counter() - started)

            store = QueueStore(base / "var" / "queue", id_block=256)
            for n in range(args.messages):
                store.enqueue(BODY, "a@bench.local", [f"r{n}@remote.test"])
            before = len(sink.messages)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO, env=env,
                           check=True, stderr=subprocess.DEVNULL)
            rate = args.messages / (time.perf_counter() - started)
            assert len(sink.messages) - before == args.messages

            daemon = subprocess.Popen([sys.executable, "-m", "queue_runner"], cwd=REPO,
                                      env=env, stderr=subprocess.DEVNULL)
            latencies = []
            try:
                time.sleep(1.5)
                for n in range(args.pickups):
                    count = len(sink.messages)
                    started = time.monotonic()
                    store.enqueue(BODY, "a@bench.local", [f"p{n}@remote.test"])
                    while len(sink.messages) == count:
                        if time.monotonic() - started > 10:
                            raise SystemExit("the daemon did not deliver within 10 s")
                        time.sleep(0.001)
                    latencies.append((sink.messages[-1].at - started) * 1000)
            finally:
                daemon.terminate()
                daemon.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    latencies.sort()
    print(f"{args.messages} messages of 4 KiB to a loopback sink, {os.cpu_count()} cores")
    print(f"reference: one smtplib connection        {reference:8.0f} msg/s")
    print(f"queue_runner --once (connect per message) {rate:7.0f} msg/s  "
          f"({rate / reference:.2f}x the reference)")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"daemon pickup latency over {args.pickups}: median "
          f"{statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
