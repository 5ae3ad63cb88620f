"""The console's overview page with a big queue and 48 hours of per-minute counters.

    .venv/bin/python -m bench.console_overview [--small 1000] [--big 100000] [--runs 5]

Two queues of deferred records (``bench.deferred.fill_deferred``, 50 domains), each with a
``metrics.db`` whose per-minute series of deliveries are full for the whole retention (48 h,
every minute of the three results, written through ``Counters`` with its clock set back),
served by the real gunicorn over HTTPS on loopback. A signed-in client (the form, its CSRF
token) times ``GET /console/`` (the 6 h chart and the 24 h one) and, for reference, the
API's ``GET /queue/summary``: the page makes the same one pass over the queue, and the
ratio shows what the chart and the templates add. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.api_queue import serve  # noqa: E402
from bench.console_queue import console_session  # noqa: E402
from bench.deferred import fill_deferred  # noqa: E402
from tmail.metrics import DELIVERIES, PER_MINUTE_RETENTION, Counters  # noqa: E402


def fill_counters(path: Path) -> None:
    """Every minute of the retention, for each result: the biggest chart there can be."""
    clock = [0.0]
    counters = Counters(path, flush_interval=3600, clock=lambda: clock[0])
    end = time.time()
    for minute in range(PER_MINUTE_RETENTION):
        clock[0] = end - minute * 60
        for n, result in enumerate(("sent", "deferred", "bounced")):
            counters.inc(DELIVERIES, 1 + (minute * (n + 3)) % 17, result=result,
                         transport="smtp")
    counters.flush()


def timed(gets: dict[str, tuple[requests.Session, str]], runs: int) -> dict[str, float]:
    """The median time of each GET over ``runs`` rounds, in seconds (after one warm-up
    round); the GETs take turns in each round, so that the load of a shared machine weighs
    on all of them alike."""
    timings: dict[str, list[float]] = {name: [] for name in gets}
    for n in range(runs + 1):
        for name, (session, url) in gets.items():
            started = time.perf_counter()
            response = session.get(url, timeout=120)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, (url, response.status_code)
            if n:
                timings[name].append(elapsed)
    return {name: statistics.median(values) for name, values in timings.items()}


def measure(data: Path, runs: int) -> dict[str, float]:
    proc, base, api = serve(data)
    try:
        console = console_session(base, api.verify)
        page = console.get(f"{base}/console/", timeout=120).text
        assert 'id="heat-map"' in page and 'id="chart"' in page
        return {**timed({"summary": (api, f"{base}/queue/summary"),
                         "overview": (console, f"{base}/console/"),
                         "overview24": (console, f"{base}/console/?hours=24")}, runs),
                "bytes": len(page)}
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tmail-overview-bench-"))
    try:
        results = {}
        for count in (args.small, args.big):
            data = base / str(count)
            fill_deferred(data / "queue", count)
            fill_counters(data / "metrics.db")
            results[count] = measure(data, args.runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'records':>8} {'GET /queue/summary':>19} {'GET /console/':>14} "
          f"{'?hours=24':>10} {'page':>8} {'overview/summary':>17}")
    for count, r in results.items():
        print(f"{count:>8} {r['summary'] * 1000:16.0f} ms {r['overview'] * 1000:11.0f} ms "
              f"{r['overview24'] * 1000:7.0f} ms {r['bytes'] / 1024:5.0f} KiB "
              f"{r['overview'] / r['summary']:16.2f}x")
    small, big = results[args.small], results[args.big]
    print(f"GET /console/ at {args.big} vs {args.small} records: "
          f"{big['overview'] / small['overview']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
