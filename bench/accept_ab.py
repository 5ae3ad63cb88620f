"""Rows 1a and 1b for this tree and another revision, interleaved: is a receiver change worth it?

    .venv/bin/python -m bench.accept_ab --baseline REV [--rounds 3] [--messages 500]

``make bench`` compares tmail with Postfix; a lever in the receiver is judged against the
tree without it, in the same run: each round runs the receiver as ``make run`` starts it
(as ``bench.run.ours_accept`` does: smtp-source, 4 KiB messages, 1, 5 and 20 sessions, over
reused connections and with one connection per message) in this tree and in ``REV``
(extracted with ``git archive``), in alternating order. The medians are printed with their
ratio, and the receiver's CPU time per message (far steadier than the rate on a shared
machine). Traffic: 127.0.0.1 only.
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

# Run in the tree measured (its own bench code): for each session count, the receiver's
# messages/s and its CPU time per message (user + system of its processes, from /proc: on a
# loaded machine the CPU per message moves far less than the rate).
CHILD = """
import json, sys
from pathlib import Path
from bench.deferred import CLOCK_TICKS, cpu_ticks, process_tree
from bench.run import RCPT, SESSIONS
from bench.smtp_tools import run_smtp_source
from bench.tmail_procs import tmail
base, messages, keep = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "reused"
figures = {}
with tmail(base, runner=False) as server:
    tree = process_tree(server.pid("smtp_receiver"))
    for sessions in SESSIONS:
        run_smtp_source(server.port, sessions, sessions, rcpt=RCPT, keep_connection=keep)
        before = sum(cpu_ticks(tree).values())
        elapsed = run_smtp_source(server.port, messages, sessions, rcpt=RCPT,
                                  keep_connection=keep)
        used = (sum(cpu_ticks(tree).values()) - before) / CLOCK_TICKS
        figures[f"{sessions}"] = messages / elapsed
        figures[f"{sessions} cpu ms"] = 1000 * used / messages
print(json.dumps(figures))
"""


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
    work = Path(tempfile.mkdtemp(prefix="tmail-ab-", dir="/var/spool"))
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
    print(f"accept, medians of {args.rounds} rounds: this tree / {args.baseline}")
    for workload in ("reused", "new"):
        for sessions in ("1", "5", "20"):
            for key, unit in ((sessions, "msg/s"), (f"{sessions} cpu ms", "ms CPU/msg")):
                ours = statistics.median(rates[("this tree", workload, key)])
                theirs = statistics.median(rates[(args.baseline, workload, key)])
                print(f"{workload:6} {sessions:>2} sessions: {ours:6.2f} / {theirs:6.2f} "
                      f"{unit} = {ours / theirs:.2f}x")
    print(json.dumps({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in rates.items()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
