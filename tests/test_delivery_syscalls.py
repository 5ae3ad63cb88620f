"""What a delivery costs the disk, seen by strace in a real ``--once`` run: the number of
fsyncs of the queue's files and directories per delivered message is part of the queue's
contract (docs/queue-format.md), and a regression there is a regression of every MX."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import tmail_env
from tests.sink import Sink
from tests.strace_helper import traced
from tmail import config as tmail_config
from tmail.queue import QueueStore

_FSYNC = re.compile(r"\bfsync\(\d+<([^>]+)>")  # a call, finished or not (threads interleave)


def message(n: int) -> bytes:
    return (f"From: s@sender.test\r\nMessage-ID: <m{n}@sender.test>\r\nSubject: {n}\r\n\r\n"
            "body\r\n").encode()


def traced_once(tmp_path: Path, recipients: list[list[str]]) -> tuple[str, Path, Sink]:
    """Queue one message per entry of ``recipients``, deliver them with ``--once`` under
    strace to a loopback sink; the trace, the queue and the sink."""
    sink = Sink()
    sink.__enter__()
    env = tmail_env(tmp_path, TMAIL_ROUTES=f"*=127.0.0.1:{sink.port}")
    config = tmail_config.load(env)
    store = QueueStore(config.queue_dir)
    for n, rcpts in enumerate(recipients):
        store.enqueue(message(n), "s@sender.test", rcpts)
    trace = tmp_path / "strace.txt"
    try:
        traced(["-m", "queue_runner", "--once"], trace, "fsync", env)
    except BaseException:  # a skip or a failure: the sink goes with it
        sink.__exit__(None, None, None)
        raise
    assert next(store.iter_ids(), None) is None  # every record delivered and removed
    return trace.read_text(), config.queue_dir, sink


@pytest.mark.parametrize("per_message", [1, 3])
def test_a_delivered_message_costs_one_fsync_of_the_queue(tmp_path: Path,
                                                          per_message: int) -> None:
    """One fsync of the records' directory for all the recipients of a message; the raw
    file's unlink is not fsync'd (a crash that undoes it leaves a leftover, never a
    record without its message)."""
    recipients = [[f"r{n}.{k}@remote.test" for k in range(per_message)] for n in range(4)]
    text, queue, sink = traced_once(tmp_path, recipients)
    try:
        assert len(sink.messages) == 4
    finally:
        sink.__exit__(None, None, None)
    fsynced = [Path(p) for p in _FSYNC.findall(text) if p.startswith(str(queue))]
    assert [p for p in fsynced if p.is_relative_to(queue / "messages")] == []
    assert len(fsynced) == 4, fsynced  # one per message: its records' leaf directory
