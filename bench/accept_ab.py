"""Rows 1a and 1b for this tree and another revision, interleaved: is a receiver change worth it?

    .venv/bin/python -m bench.accept_ab --baseline REV [--rounds 3] [--messages 500]

``make bench`` compares tmail with Postfix; a lever in the receiver is judged against the
tree without it, in the same run: each round runs ``bench.run.ours_accept`` (the receiver
as ``make run`` starts it, smtp-source, 4 KiB messages, 1, 5 and 20 sessions, both over
reused connections and with one connection per message) in this tree and in ``REV``
(extracted with ``git archive``), in alternating order, and the medians are printed with
their ratio. Traffic: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.runner_retries import extract
from bench.tmail_procs import REPO

CHILD = ("import json, sys; from pathlib import Path; from bench.run import ours_accept; "
         "print(json.dumps(ours_accept(Path(sys.argv[1]), int(sys.argv[2]), "
         "keep_connection=sys.argv[3] == 'reused')))")


def accept(tree: Path, base: Path, messages: int, workload: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(base), str(messages), workload],
                          cwd=tree, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    trees = {"this tree": REPO, args.baseline: extract(args.baseline)}
    work = Path(tempfile.mkdtemp(prefix="tmail-ab-", dir="/var/tmp"))
    rates: dict[tuple[str, str, str], list[float]] = {}
    try:
        for number in range(args.rounds):
            order = list(trees.items())[:: 1 if number % 2 == 0 else -1]
            for name, tree in order:
                for workload in ("reused", "new"):
                    base = work / f"{number}-{workload}-{name.replace(' ', '-')}"
                    for sessions, rate in accept(tree, base, args.messages, workload).items():
                        rates.setdefault((name, workload, sessions), []).append(rate)
            print(f"round {number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        report(rates, args)
    finally:  # removing the queues takes a while on a busy disk: after the figures
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(trees[args.baseline], ignore_errors=True)
    return 0


def report(rates: dict[tuple[str, str, str], list[float]], args: argparse.Namespace) -> None:
    print(f"accept, msg/s, medians of {args.rounds} rounds: this tree / {args.baseline}")
    for workload in ("reused", "new"):
        for sessions in ("1", "5", "20"):
            ours = statistics.median(rates[("this tree", workload, sessions)])
            theirs = statistics.median(rates[(args.baseline, workload, sessions)])
            print(f"{workload:6} {sessions:>2} sessions: {ours:6.0f} / {theirs:6.0f} = "
                  f"{ours / theirs:.2f}x")
    print(json.dumps({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in rates.items()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
