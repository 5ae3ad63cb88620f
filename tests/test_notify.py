"""The notify file: hints that every reader gets across rotations, that carry what a daemon
worker needs to filter and schedule them, and that do not grow without end with cron alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, tmail_env
from tmail import config as tmail_config
from tmail.queue import QueueStore
from tmail.queue.notify import ROTATE_AT, NotifyReader, old_path, parse_hints
from tmail.queue.ops import QueueOps


def message(n: int) -> bytes:
    return f"From: s@sender.test\r\nMessage-ID: <n{n}@sender.test>\r\n\r\nbody\r\n".encode()


def test_hints_carry_the_uuid_and_the_due_time(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    reader = NotifyReader(store.layout.notify)
    reader.skip_to_end()
    records = store.enqueue(message(1), "s@sender.test", ["a@remote.test", "b@remote.test"])
    hints = reader.read_new()
    assert [(h.id, h.uuid) for h in hints] == [(r.id, r.uuid) for r in records]
    assert [h.due for h in hints] == [r.next_delivery_at.timestamp() for r in records]


def test_release_hint_carries_the_new_due_time(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    ops = QueueOps(store, "mx.test")
    [record] = store.enqueue(message(1), "s@sender.test", ["a@remote.test"])
    ops.hold(record.id)
    reader = NotifyReader(store.layout.notify)
    reader.skip_to_end()
    ops.release(record.id)
    [hint] = reader.read_new()
    released = store.get(record.id)
    assert (hint.id, hint.uuid, hint.due) == (
        record.id, record.uuid, released.next_delivery_at.timestamp())


def test_every_reader_gets_every_hint_when_another_one_rotates_the_file(
    tmp_path: Path,
) -> None:
    """Three daemon workers read the same file at their own pace (the last one so seldom
    that a whole file's worth of hints is rotated between two of its reads); none loses a
    hint. The old reader truncated the file: the others lost most of theirs."""
    store = QueueStore(tmp_path / "queue")
    readers = [NotifyReader(store.layout.notify, rotate_at=2000) for _ in range(3)]
    for reader in readers:
        reader.skip_to_end()
    got: list[list[int]] = [[] for _ in readers]
    expected = []
    for n in range(120):
        expected += [r.id for r in store.enqueue(message(n), "s@sender.test", ["a@x.test"])]
        for index, reader in enumerate(readers):
            if n % (1, 3, 40)[index] == 0:
                got[index] += [hint.id for hint in reader.read_new()]
    for index, reader in enumerate(readers):
        got[index] += [hint.id for hint in reader.read_new()]
        reader.close()
    assert old_path(store.layout.notify).exists()  # it was rotated...
    assert store.layout.notify.stat().st_size < 2000 + 200  # ...and stays small
    assert all(ids == expected for ids in got)


def test_a_hint_written_to_the_rotated_file_is_still_read(tmp_path: Path) -> None:
    """A writer may open ``notify`` just before a reader renames it away."""
    path = tmp_path / "notify"
    path.write_bytes(b"1 " + b"a" * 40 + b" 0.000\n")
    reader = NotifyReader(path, rotate_at=10)
    assert [h.id for h in reader.read_new()] == [1]  # read to the end: rotated
    assert not path.exists() and old_path(path).exists()
    with open(old_path(path), "ab") as late_writer:  # opened before the rename
        late_writer.write(b"2 " + b"b" * 40 + b" 0.000\n")
    path.write_bytes(b"3 " + b"c" * 40 + b" 0.000\n")  # the next writer creates a new one
    assert sorted(h.id for h in reader.read_new()) == [2, 3]
    reader.close()


def test_lines_of_another_format_are_not_hints_and_a_partial_line_waits(tmp_path: Path) -> None:
    hints = parse_hints(b"12\ngarbage here now\n7 abc 12.5\nx abc 1\n")
    assert [(h.id, h.uuid, h.due) for h in hints] == [(7, "abc", 12.5)]
    path = tmp_path / "notify"
    path.write_bytes(b"7 abc 12.5\n8 ab")
    reader = NotifyReader(path)
    assert [h.id for h in reader.read_new()] == [7]
    with open(path, "ab") as writer:
        writer.write(b"c 13.5\n")
    assert [(h.id, h.uuid) for h in reader.read_new()] == [(8, "abc")]
    reader.close()


def test_cron_runs_alone_keep_the_notify_file_bounded(tmp_path: Path) -> None:
    env = tmail_env(tmp_path, TMAIL_ROUTES="*=127.0.0.1:9")
    store = QueueStore(tmail_config.load(env).queue_dir)
    line = b"1 " + b"0" * 40 + b" 0.000\n"
    store.layout.notify.write_bytes(line * (ROTATE_AT // len(line) + 1))  # what enqueues left
    done = subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not store.layout.notify.exists() or store.layout.notify.stat().st_size < ROTATE_AT
    store.enqueue(message(1), "s@sender.test", ["a@remote.test"])
    assert store.layout.notify.stat().st_size < 200  # new hints go to a new file
