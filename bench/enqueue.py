"""Enqueue rate against the disk's own limit for fsync'd writes, in the same run.

    .venv/bin/python bench/enqueue.py [--messages 500] [--rounds 3] [--dir DIR]

The disk limit is measured the way the queue writes: a 4 KiB file written to a temp name,
fsync'd, renamed into a directory, directory fsync'd. "two files" does that for a raw file
and a small JSON file, which is the least any message queue with separate metadata does.
Rounds alternate between the variants so that noise from the shared machine hits all of
them alike; the table shows medians and ratios, never a lone absolute figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tmail.queue import Envelope, QueueStore

# 4 KiB with 76-character lines, as a real message has (SMTP forbids lines over 998).
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 52 + b"x" * 18


def fsync_write(directory: Path, name: str, data: bytes) -> None:
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, directory / name)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


def prepare_store(root: Path) -> None:
    QueueStore(root)  # creates the tree once, as a real queue has it before its first message


def disk_one_file(root: Path, count: int) -> None:
    for n in range(count):
        fsync_write(root, f"{n}.eml", BODY)


def disk_two_files(root: Path, count: int) -> None:
    for n in range(count):
        fsync_write(root, f"{n}.eml", BODY)
        fsync_write(root, f"{n}.json", b'{"Id": %d, "Status": 2}\n' % n)


def tmail_single(root: Path, count: int) -> None:
    store = QueueStore(root, id_block=64)
    for _ in range(count):
        store.enqueue(BODY, "a@example.org", ["b@example.net"])


def tmail_batched(root: Path, count: int, batch: int = 32) -> None:
    store = QueueStore(root, id_block=256)
    envelope = Envelope(BODY, "a@example.org", ["b@example.net"])
    for start in range(0, count, batch):
        store.enqueue_many([envelope] * min(batch, count - start))


VARIANTS: dict[str, Callable[[Path, int], None]] = {
    "disk: 1 file fsync+rename": disk_one_file,
    "disk: 2 files fsync+rename": disk_two_files,
    "tmail enqueue, one message per call": tmail_single,
    "tmail enqueue_many, 32 messages per call": tmail_batched,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="a directory on the disk to measure")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    base = Path(tempfile.mkdtemp(prefix="tmail-bench-", dir=args.dir))
    try:
        for round_no in range(args.rounds):
            for name, variant in VARIANTS.items():
                root = base / f"{round_no}-{len(rates[name])}-{abs(hash(name))}"
                root.mkdir()
                if name.startswith("tmail"):
                    prepare_store(root)
                started = time.perf_counter()
                variant(root, args.messages)
                rates[name].append(args.messages / (time.perf_counter() - started))
                shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    reference = statistics.median(rates["disk: 2 files fsync+rename"])
    print(f"{args.messages} messages of 4 KiB, median of {args.rounds} rounds,"
          f" {os.cpu_count()} cores")
    print(f"{'variant':45} {'msg/s':>9} {'vs 2-file disk limit':>21}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:45} {median:9.0f} {median / reference:20.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
