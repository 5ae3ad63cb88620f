"""The receiver's group commit: each session gets its own message's outcome, and a flood of
messages waits for room instead of growing memory."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from pathlib import Path

import pytest

from smtp_receiver.committer import GroupCommitter
from tests.filesystems import fill, small_tmpfs
from tmail.queue import Envelope, EnvelopeError, QueueStore, QueueWriteError

RAW = b"Subject: hi\r\n\r\nbody\r\n"


def envelope(n: int, sender: str = "a@b.org") -> Envelope:
    return Envelope(RAW, sender, [f"r{n}@y.org"])


async def submit_all(committer: GroupCommitter, envelopes: list[Envelope]) -> list[object]:
    return await asyncio.gather(*(committer.submit(e) for e in envelopes),
                                return_exceptions=True)


def test_a_poisoned_message_fails_only_its_own_session(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue", id_block=64)
    committer = GroupCommitter(store)
    envelopes = [envelope(n) for n in range(20)]
    envelopes[7] = envelope(7, sender="\udcff@x.org")
    try:
        results = asyncio.run(submit_all(committer, envelopes))
    finally:
        committer.close()

    assert isinstance(results[7], EnvelopeError)
    assert [r[0].rcpt_to for i, r in enumerate(results) if i != 7] == [
        f"r{n}@y.org" for n in range(20) if n != 7]
    assert len(list(store.iter_ids())) == 19
    assert list(store.layout.tmp.iterdir()) == []


def test_a_full_disk_reaches_the_session_with_its_errno(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path) as small_fs:
        store = QueueStore(small_fs / "queue")
        fill(small_fs)
        committer = GroupCommitter(store)
        try:
            [result] = asyncio.run(submit_all(committer, [envelope(1)]))
        finally:
            committer.close()
        assert isinstance(result, QueueWriteError) and result.errno == errno.ENOSPC
        assert list(store.layout.tmp.iterdir()) == []


def test_submit_waits_for_room_when_too_many_messages_are_pending(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")  # id_block=1: every batch takes the counter's lock
    committer = GroupCommitter(store, max_batch=4, max_pending=6)

    async def scenario() -> list[object]:
        fd = os.open(store.layout.counter, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process allocating ids: the batch stalls
        try:
            tasks = [asyncio.create_task(committer.submit(envelope(n))) for n in range(20)]
            for _ in range(3000):  # up to 30 s on a loaded machine
                if committer.pending == 6:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # and it stays there: nobody gets past the cap
            assert committer.pending == 6  # the other 14 wait in submit, holding nothing
            assert not any(task.done() for task in tasks)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    finally:
        committer.close()
    assert all(isinstance(result, list) for result in results)
    assert len(list(store.iter_ids())) == 20
    assert committer.pending == 0


@pytest.mark.parametrize("max_pending", [0, -1])
def test_the_pending_cap_must_hold_at_least_one_message(tmp_path: Path, max_pending: int) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        GroupCommitter(QueueStore(tmp_path / "queue"), max_pending=max_pending)
