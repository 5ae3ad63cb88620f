"""The admin API with a big queue: GET /queue/ID latency, GET /queue, summary, bulk rate.

    .venv/bin/python bench/api_queue.py [--small 100] [--big 100000]

Two queues of deferred records are filled (``bench.deferred.fill_deferred``: written by the
real store, with fsync turned off for the filling only: durability is not what this
measures), each served by the real gunicorn over HTTPS on loopback. The small queue is
the reference for the big one. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.deferred import fill_deferred  # noqa: E402
from tmail.queue import QueueStore  # noqa: E402


def serve(data: Path) -> tuple[subprocess.Popen[bytes], str, requests.Session]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TMAIL_DATA_DIR": str(data), "TMAIL_MAILBOXES_DIR": str(data / "mb"),
           "TMAIL_API_BIND": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                             "wsgi:app"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    session = requests.Session()
    session.trust_env, session.auth = False, ("admin", "admin")
    session.verify = str(data / "tls" / "cert.pem")
    base = f"https://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if session.get(base + "/ping", timeout=2).ok:
                break
        except (requests.ConnectionError, OSError):
            time.sleep(0.1)
    return proc, base, session


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def workers(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def measure(data: Path, count: int) -> dict[str, float]:
    proc, base, session = serve(data)
    try:
        present = list(QueueStore(data / "queue").iter_ids())
        assert len(present) >= count, f"{len(present)} records, {count} expected"
        ids = random.Random(1).sample(present, min(300, len(present)))
        timings = []
        for record_id in ids:
            started = time.perf_counter()
            assert session.get(f"{base}/queue/{record_id}").status_code == 200
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        before = rss_kib(workers(proc.pid))
        started = time.perf_counter()
        with session.get(f"{base}/queue", stream=True) as response:
            size = sum(len(chunk) for chunk in response.iter_content(65536))
        listing = time.perf_counter() - started
        growth = rss_kib(workers(proc.pid)) - before
        started = time.perf_counter()
        assert session.get(f"{base}/queue/summary").ok
        summary = time.perf_counter() - started
        started = time.perf_counter()
        held = session.post(f"{base}/queue/hold?host=d1.example").json()["done"]
        bulk = held / (time.perf_counter() - started)
        return {"median": statistics.median(timings),
                "p99": timings[min(len(timings) - 1, int(len(timings) * 0.99))],
                "listing": listing, "bytes": size, "growth": growth / 1024,
                "summary": summary, "bulk": bulk}
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tmail-api-bench-"))
    try:
        results = {}
        for label, count in (("small", args.small), ("big", args.big)):
            data = base / label
            fill_deferred(data / "queue", count)
            results[count] = measure(data, count)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    small, big = results[args.small], results[args.big]
    print(f"{'records':>8} {'GET /queue/ID med':>18} {'p99':>7} {'GET /queue':>11} "
          f"{'RSS growth':>11} {'summary':>8} {'bulk hold':>10}")
    for count, r in results.items():
        print(f"{count:>8} {r['median']:15.2f} ms {r['p99']:5.1f}ms {r['listing']:9.2f} s "
              f"{r['growth']:7.1f} MiB {r['summary']:6.2f} s {r['bulk']:6.0f} r/s")
    print(f"GET /queue/ID at {args.big} vs {args.small}: {big['median'] / small['median']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
