"""Spooling a message into the queue as it arrives: bounded memory, no copy at enqueue."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from tests.filesystems import small_tmpfs
from tmail.queue import Envelope, QueueStore, QueueWriteError

HEADERS = b"Received: from x\r\nMessage-ID: <spool@example.org>\r\nSubject: big\r\n\r\n"


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path / "queue", id_block=8)


def spool_files(store: QueueStore) -> list[Path]:
    return list(store.layout.tmp.iterdir())


def test_spooled_message_is_queued_byte_for_byte_by_moving_its_file(store: QueueStore) -> None:
    body = b"".join(b"line %07d of a large message\r\n" % n for n in range(40_000))
    spool = store.spool()
    for start in range(0, len(HEADERS + body), 7777):  # chunks as a socket delivers them
        spool.write((HEADERS + body)[start:start + 7777])
    assert spool.size == len(HEADERS + body)
    [path] = spool_files(store)
    inode = path.stat().st_ino

    [record] = store.enqueue_many([Envelope(spool, "a@b.org", ["x@y.org"])])[0]

    raw = store.read_raw(record.id)
    assert raw == HEADERS + body
    assert record.key == hashlib.sha1(raw).hexdigest()
    assert record.size == len(raw)
    assert record.message_id == "spool@example.org"
    assert store.layout.record_raw(record.id).stat().st_ino == inode  # moved, not copied
    assert spool_files(store) == []
    spool.discard()  # consumed: a no-op
    assert store.read_raw(record.id) == raw


def test_message_id_is_read_from_a_bounded_header_block(store: QueueStore) -> None:
    spool = store.spool()
    spool.write(b"Subject: no blank line\r\n" + b"X" * 300_000 + b"\r\nMessage-ID: <late@x>\r\n")
    [record] = store.enqueue_many([Envelope(spool, "a@b.org", ["x@y.org"])])[0]
    assert record.message_id == ""


def test_discard_removes_the_spool_file_and_is_idempotent(store: QueueStore) -> None:
    spool = store.spool()
    spool.write(b"Subject: x\r\n\r\nbody\r\n" * 10_000)
    assert spool_files(store)
    spool.discard()
    spool.discard()
    assert spool_files(store) == []
    with pytest.raises(ValueError):
        spool.write(b"more")


def test_failed_enqueue_consumes_the_spool(store: QueueStore) -> None:
    spool = store.spool()
    spool.write(HEADERS + b"body\r\n")
    [outcome] = store.enqueue_many([Envelope(spool, "a@b.org", [])])
    assert isinstance(outcome, ValueError)
    assert spool_files(store) == []
    assert list(store.iter_ids()) == []


def test_write_on_a_full_file_system_raises_with_its_errno(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path) as small_fs:
        store = QueueStore(small_fs / "queue")
        spool = store.spool()
        with pytest.raises(QueueWriteError) as failure:
            for _ in range(40):
                spool.write(b"x" * 65_536)
        assert failure.value.errno == errno.ENOSPC
        with pytest.raises(QueueWriteError):  # a spool with a hole in it stays refused
            spool.write(b"y")
        [outcome] = store.enqueue_many([Envelope(spool, "a@b.org", ["x@y.org"])])
        assert isinstance(outcome, QueueWriteError) and outcome.errno == errno.ENOSPC
        assert spool_files(store) == [] and list(store.iter_ids()) == []
        spool.discard()


def test_a_small_message_creates_its_file_only_at_enqueue(store: QueueStore) -> None:
    """The receiver's event loop creates no file for a message under the buffer size: a file
    creation waits for the journal commit another session's fsync started (ext4, XFS),
    and would hold up every session of the process. The enqueue, in its thread, writes it."""
    spool = store.spool()
    spool.write(HEADERS + b"small body\r\n")
    assert spool_files(store) == []
    [record] = store.enqueue_many([Envelope(spool, "a@b.org", ["x@y.org"])])[0]
    assert store.read_raw(record.id) == HEADERS + b"small body\r\n"
    assert spool_files(store) == []


def test_spool_left_by_a_crash_is_removed_by_cleanup(store: QueueStore) -> None:
    spool = store.spool()
    spool.write(b"Subject: x\r\n\r\n" + b"partial\r\n" * 10_000)  # beyond the buffer
    # the receiver dies here: nobody discards the spool
    assert store.cleanup(grace=3600) == 0
    assert store.cleanup(grace=0) == 1
    assert spool_files(store) == []


def test_a_spool_dropped_without_enqueue_or_discard_leaves_no_file(store: QueueStore) -> None:
    spool = store.spool()
    spool.write(b"Subject: x\r\n\r\nabandoned by a session that died\r\n")
    del spool
    assert spool_files(store) == []
