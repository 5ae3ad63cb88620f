"""The daemon runner's CPU per delivered record, for this tree and another revision, interleaved.

    .venv/bin/python -m bench.deliver_ab --baseline REV [--rounds 3] [--records 500]
    .venv/bin/python -m bench.deliver_ab --trace DIR [--records 500]   # strace -c and py-spy

Rows 2a and 2b of ``make bench`` run the receiver and the daemon runner on the same two cores,
so every millisecond the runner spends per record is taken from the receiver. This measures
the runner alone: ``python -m queue_runner`` (its default worker processes, every domain
routed to a loopback ``smtp-sink``) is started and warmed up (a few messages delivered), then
stopped with SIGSTOP; ``--records`` records are queued through the store's ``enqueue_many``
(batches of 20 messages, fsync on, hints written, as the receiver's group commit does); then
SIGCONT, and the runner's whole process tree is timed until the sink has every message and
the queue is empty. Three workloads: one recipient per message, three recipients per
message (one SMTP transaction each), and "1-trickle", one recipient per message queued
while the runner runs, 10 every 30 ms (about Postfix's rate in row 2a): each wake of the
daemon then starts a small pass, as behind a real receiver, where the burst workloads start
one big pass (what is read once per pass is shared by far more attempts there). Printed:
user and system CPU ms per delivered record (from ``/proc/<pid>/stat`` of the tree) and
records/s (in the trickle workload, the rate the records came at), medians of ``--rounds``
rounds that alternate the order of the two trees; ``REV`` is extracted with ``git archive``.

``--trace DIR`` runs this tree once per workload under ``strace -c -f`` (syscall counts,
fsyncs per record) and then under ``py-spy record -g -f raw`` (one profile per worker), into
``DIR``. Data dirs go under /var/spool (see docs/benchmarks.md on /var/tmp). Traffic:
127.0.0.1 only.
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

# Recipients per message; "-trickle": the runner runs while the messages arrive, 10 every
# 30 ms (about Postfix's rate in row 2a), so each wake of the daemon is a small pass.
WORKLOADS = ("1", "3", "1-trickle")

# Run in the tree measured, with that tree's bench helpers and tmail: the figures of one drain.
CHILD = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
from bench.deferred import BODY, CLOCK_TICKS, process_tree, wait_quiet
from bench.smtp_tools import SmtpSink
from bench.tmail_procs import tmail
from tmail.queue import Envelope, QueueStore

base, records, tracer = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
rcpts, trickle = int(sys.argv[3].split("-")[0]), sys.argv[3].endswith("-trickle")
messages = records // rcpts
WARM = 20

def ticks(pids):
    user = system = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system

def fill(store, count, tag, batch=20, pace=0.0):
    envelopes = [Envelope(BODY, "sender@bench.test",
                          [f"{tag}{n}.{r}@bench.test" for r in range(rcpts)])
                 for n in range(count)]
    begun = time.perf_counter()
    for number, start in enumerate(range(0, count, batch)):
        time.sleep(max(0.0, begun + number * pace - time.perf_counter()))
        for outcome in store.enqueue_many(envelopes[start:start + batch]):
            assert not isinstance(outcome, Exception), outcome

def drained(store, sink, count, timeout=300.0):
    sink.wait_for(count, timeout)
    deadline = time.monotonic() + timeout
    while next(store.iter_ids(), None) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError("the queue did not empty")
        time.sleep(0.005)

with SmtpSink() as sink, tmail(base, receiver=False, runner=True,
                               route_port=sink.port) as server:
    root = server.pid("queue_runner")
    store = QueueStore(base / "var" / "queue")
    fill(store, WARM, "w")
    drained(store, sink, WARM, 120.0)
    wait_quiet(root, 30.0)
    tree = process_tree(root)
    workers = tree[1:] or tree
    tools = []
    if tracer == "strace":
        tasks = [f"-p{t}" for w in workers for t in os.listdir(f"/proc/{w}/task")]
        tools.append(subprocess.Popen(["strace", "-c", "-f", "-o", str(base / "strace.txt"),
                                       *tasks], stderr=subprocess.DEVNULL))
        time.sleep(1.0)
    for pid in [] if trickle else tree:
        os.kill(pid, signal.SIGSTOP)
    if not trickle:
        fill(store, messages, "m")
    if tracer == "py-spy":
        for w in workers:
            tools.append(subprocess.Popen(
                [sys.argv[5], "record", "-p", str(w), "-r", "200", "-f", "raw", "-g",
                 "-o", str(base / f"py-spy.{w}.txt")], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        time.sleep(1.0)
    before, started = ticks(tree), time.perf_counter()
    for pid in [] if trickle else tree:
        os.kill(pid, signal.SIGCONT)
    if trickle:
        fill(store, messages, "m", batch=10, pace=0.03)
    drained(store, sink, WARM + messages)
    elapsed = time.perf_counter() - started
    after = ticks(tree)
    server.check_running()
    for tool in tools:
        tool.send_signal(signal.SIGINT)
        tool.wait(60)
done = messages * rcpts
print(json.dumps({"user ms": 1000 * (after[0] - before[0]) / CLOCK_TICKS / done,
                  "sys ms": 1000 * (after[1] - before[1]) / CLOCK_TICKS / done,
                  "records/s": done / elapsed, "workers": len(workers)}))
"""


def drain(tree: Path, base: Path, records: int, workload: str,
          tracer: str = "") -> dict[str, float]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    done = subprocess.run([sys.executable, "-c", CHILD, str(base), str(records), workload,
                           tracer or "-", py_spy], cwd=tree,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"drain in {tree} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])
    figures["cpu ms"] = figures["user ms"] + figures["sys ms"]
    return figures


def compare(args: argparse.Namespace, work: Path) -> None:
    trees = {"this tree": REPO, args.baseline: extract(args.baseline)}
    figures: dict[tuple[str, str, str], list[float]] = {}
    try:
        for number in range(args.rounds):
            order = list(trees.items())[:: 1 if number % 2 == 0 else -1]
            for name, tree in order:
                for workload in WORKLOADS:
                    base = work / f"{number}-{workload}-{name.replace(' ', '-')}"
                    for key, value in drain(tree, base, args.records, workload).items():
                        figures.setdefault((name, workload, key), []).append(value)
                    shutil.rmtree(base, ignore_errors=True)
            print(f"round {number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(trees[args.baseline], ignore_errors=True)
    print(f"runner draining {args.records} records, medians of {args.rounds} rounds: "
          f"this tree / {args.baseline}")
    for workload in WORKLOADS:
        for key, unit in (("cpu ms", "ms CPU/record"), ("user ms", "ms user/record"),
                          ("sys ms", "ms sys/record"), ("records/s", "records/s")):
            ours = statistics.median(figures[("this tree", workload, key)])
            theirs = statistics.median(figures[(args.baseline, workload, key)])
            print(f"{workload:>9} rcpt/msg {unit:>15}: {ours:7.3f} / {theirs:7.3f} = "
                  f"{ours / theirs:.2f}x")
    print(json.dumps({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in figures.items()}), flush=True)


def trace(args: argparse.Namespace, work: Path) -> None:
    out = Path(args.trace)
    out.mkdir(parents=True, exist_ok=True)
    for workload in WORKLOADS:
        for tracer in ("strace", "py-spy"):
            base = work / f"{tracer}-{workload}"
            figures = drain(REPO, base, args.records, workload, tracer)
            print(f"{workload} rcpt/msg under {tracer}: {figures}")
            for found in base.glob(f"{tracer}*.txt"):
                shutil.copy(found, out / f"{workload}rcpt-{found.name}")
            shutil.rmtree(base, ignore_errors=True)
    print(f"profiles in {out}; per record: divide strace's calls by "
          f"{args.records} (the warm-up is not traced)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to compare with")
    parser.add_argument("--trace", help="a directory for strace and py-spy output instead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=500)
    args = parser.parse_args()
    if not args.baseline and not args.trace:
        parser.error("give --baseline REV or --trace DIR")
    work = Path(tempfile.mkdtemp(prefix="tmail-deliver-ab-", dir="/var/spool"))
    try:
        trace(args, work) if args.trace else compare(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
