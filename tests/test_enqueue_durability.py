"""What an enqueue asks of the disk, seen by strace: the fsync rounds before the ``250``."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from tests.strace_helper import traced
from tmail.queue import QueueStore

# One line of ``strace -f -y``: "<pid> <call>(<args>) = <result>", possibly cut in two by
# another thread ("<unfinished ...>" then "<... call resumed>").
_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\((.*?)(?:\)\s+= (-?\d+)|"
                   r" <unfinished \.\.\.>))")
_PATH = re.compile(r"<([^>]+)>")

ENQUEUE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tmail.queue import Envelope, QueueStore
    store = QueueStore(Path(sys.argv[1]), id_block=64)
    store.create_message_dirs()  # as the receiver does at start-up: accepting never mkdirs
    raw = b"Subject: durable\\r\\n\\r\\nbody\\r\\n"
    store.enqueue(raw, "a@b.org", ["warm@y.org"])  # the id block and the record leaf
    os.access("/MARK-enqueue", os.F_OK)
    outcomes = store.enqueue_many([Envelope(raw, "a@b.org", [f"r{n}@y.org", f"s{n}@y.org"])
                                   for n in range(3)])
    assert not any(isinstance(outcome, Exception) for outcome in outcomes), outcomes
    """
)


def disk_steps(trace: str, root: Path) -> tuple[list[str], set[str]]:
    """The enqueue's calls after the mark, in the order they started, as "file" (fsync of a
    temp file), "name" (a rename or link into the queue tree) and "dir" (fsync of a
    directory); and the directories fsync'ed."""
    steps, dirs, started = [], set(), False
    for line in trace.splitlines():
        match = _LINE.match(line)
        if match is None or match.group(2):  # a resumed call was counted when it started
            continue
        call, args = match.group(3), match.group(4)
        if "MARK-enqueue" in args:
            started = True
        elif started and call == "fsync":
            path = _PATH.search(args).group(1)  # type: ignore[union-attr]
            if path.startswith(str(root / "tmp")):
                steps.append("file")
            else:
                steps.append("dir")
                dirs.add(path)
        elif started and call in {"rename", "renameat", "renameat2", "link", "linkat"}:
            steps.append("name")
    return steps, dirs


def test_an_enqueue_syncs_all_files_then_all_directories(tmp_path: Path) -> None:
    """Two rounds of fsyncs for a batch: every file is durable before any name appears, and
    every record's directory is durable before the call returns (the 250). Three messages
    of consecutive ids share one leaf: one directory fsync for the batch, not one more per
    message for its Uuid name in a hashed messages/ leaf (an index, synced lazily)."""
    root = tmp_path / "q"
    QueueStore(root)
    trace = tmp_path / "strace.txt"
    traced(["-c", ENQUEUE, str(root)], trace,
           "fsync,rename,renameat,renameat2,link,linkat,access,faccessat,faccessat2")
    steps, dirs = disk_steps(trace.read_text(), root)
    rounds = [step for n, step in enumerate(steps) if n == 0 or steps[n - 1] != step]
    assert rounds == ["file", "name", "dir"], steps
    assert steps.count("file") == 3 * (1 + 2)  # each raw file and each record
    store = QueueStore(root)
    leaves = {str(store.layout.record_dir(record.id)) for record in store.iter_records()
              if record.rcpt_to != "warm@y.org"}
    assert dirs == leaves and steps.count("dir") == len(leaves) == 1, steps
