"""The web console's Queue page with a big queue: the first page's render time.

    .venv/bin/python -m bench.console_queue [--small 1000] [--big 100000] [--runs 7]

For each size, a queue of deferred records (``bench.deferred.fill_deferred``, to 100
domains in turn: one host is 1 % of the queue) is filled on tmpfs (``/dev/shm``: the
disk is not what this measures), served by the real gunicorn over HTTPS on loopback
(``bench.api_queue.serve``); the benchmark signs in through the console's form, as a
browser does, then times the first page (50 rows) of ``/console/queue`` three ways:

* newest first, unfiltered: reads the top leaf directory of the tree only;
* newest first, the page below an Id half way down the queue (a cursor, ``before``):
  should cost what the first page costs;
* newest first, filtered by one host (1 % of the records): reads until 50 rows match
  (5,000 records at 100,000; all of them at 1,000, which has 10 such rows);
* by next attempt (``order=next``): a full scan of the records, whatever the size.

Each figure is the median of ``--runs`` requests after one warm-up request, with the
ratio to ``GET /queue?limit=50`` (the API's first 50 records, JSON) on the same queue.
Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.api_queue import serve
from bench.deferred import fill_deferred

HOSTS = 100  # one host is 1 % of the queue
PAGES = {
    "newest first": "/console/queue",
    "half way down": "/console/queue?before={middle}",
    "host filter (1 %)": "/console/queue?host=d7.example",
    "by next attempt": "/console/queue?order=next",
}
REFERENCE = "/queue?limit=50"


def console_session(base: str, verify: str) -> requests.Session:
    """Signed in through the sign-in form, with its CSRF token, as a browser is."""
    session = requests.Session()
    session.trust_env, session.verify = False, verify
    form = session.get(f"{base}/console/sign-in", timeout=30).text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form)
    assert token, "no CSRF token on the sign-in page"
    signed = session.post(f"{base}/console/sign-in", timeout=30,
                          data={"csrf_token": token.group(1), "username": "admin",
                                "password": "admin"},
                          headers={"Referer": f"{base}/console/sign-in"})
    assert signed.ok and signed.url.endswith("/console/"), signed.status_code
    return session


def median_ms(session: requests.Session, url: str, runs: int, rows: int | None) -> float:
    """The median time of ``runs`` GETs of ``url`` (after one not counted), checking each
    answer (and, for a console page, that it shows ``rows`` rows)."""
    timings = []
    for run in range(runs + 1):
        started = time.perf_counter()
        response = session.get(url, timeout=300)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, (url, response.status_code)
        if rows is not None:
            shown = response.text.count('name="id" value=')
            assert shown == rows, (url, shown, rows)
        if run:
            timings.append(elapsed * 1000)
    return statistics.median(timings)


def measure(data: Path, count: int, runs: int) -> dict[str, float]:
    proc, base, api = serve(data)
    try:
        console = console_session(base, str(api.verify))
        figures = {"reference": median_ms(api, base + REFERENCE, runs, None)}
        for label, path in PAGES.items():
            rows = min(50, count // HOSTS) if "host" in label else min(50, count)
            figures[label] = median_ms(console, base + path.format(middle=count // 2), runs,
                                       rows)
        return figures
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", default="/dev/shm", help="where the queues go (tmpfs)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tmail-console-bench-", dir=args.dir))
    results, fills = {}, {}
    try:
        for count in (args.small, args.big):
            data = base / str(count)
            fills[count] = fill_deferred(data / "queue", count, hosts=HOSTS)
            results[count] = measure(data, count, args.runs)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"first page of /console/queue (50 rows), median of {args.runs} requests, ms; "
          f"(x) = ÷ GET {REFERENCE} on the same queue")
    print(f"{'records':>8} {'filled':>7} {'GET /queue':>11} "
          + " ".join(f"{label:>20}" for label in PAGES))
    for count, figures in results.items():
        reference = figures["reference"]
        cells = " ".join(f"{figures[label]:9.1f} ({figures[label] / reference:5.1f}x)"
                         .rjust(20) for label in PAGES)
        print(f"{count:>8} {fills[count]:6.0f}s {reference:9.1f}ms {cells}")
    small, big = results[args.small], results[args.big]
    print(f"{args.big} vs {args.small} records: "
          + ", ".join(f"{label} {big[label] / small[label]:.2f}x" for label in PAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
