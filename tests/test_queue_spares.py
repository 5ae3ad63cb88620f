"""Files made ahead (tmail/queue/spares.py): the receiver's commit thread makes them when it
is idle, the next message's spool and record are those inodes, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from smtp_receiver.committer import GroupCommitter
from tmail.queue import Envelope, QueueStore
from tmail.queue.spares import SpareFiles

RAW = b"Subject: hi\r\n\r\nbody\r\n"


def spares_in(tmp: Path) -> dict[int, Path]:
    return {path.stat().st_ino: path for path in tmp.iterdir() if path.suffix == ".new"}


async def queue_one(committer: GroupCommitter, store: QueueStore, rcpt: str) -> int:
    """Queue a message the way the receiver does (a spool), and give the idle commit
    thread its moment; returns the record's Id."""
    spool = store.spool()
    spool.write(RAW)
    [record] = await committer.submit(Envelope(spool, "a@b.org", [rcpt]))
    for _ in range(500):  # the commit thread makes them once the batch is answered
        if len(spares_in(store.layout.tmp)) == 4:
            break
        await asyncio.sleep(0.01)
    return record.id


def test_the_next_message_is_written_into_files_made_while_the_receiver_was_idle(
    tmp_path: Path,
) -> None:
    store = QueueStore(tmp_path / "queue", id_block=64)
    committer = GroupCommitter(store)

    async def scenario() -> tuple[dict[int, Path], int, int]:
        await queue_one(committer, store, "first@y.org")
        made = spares_in(store.layout.tmp)
        second = await queue_one(committer, store, "second@y.org")
        return made, second, len(spares_in(store.layout.tmp))

    try:
        made, second, left = asyncio.run(scenario())
    finally:
        committer.close()
    assert len(made) == 4 and left == 4  # made again after the second one
    raw = store.layout.record_raw(second).stat().st_ino
    record = store.layout.record_json(second).stat().st_ino
    assert {raw, record} <= set(made)  # no inode allocated between the dot and the 250
    assert store.read_raw(second).endswith(RAW)
    assert list(store.layout.tmp.iterdir()) == []  # close() removed the spares left


def test_a_spare_too_old_or_gone_is_replaced_by_a_new_file(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = SpareFiles(tmp, keep=2, max_age=0.0)
    stale.refill()
    old = set(spares_in(tmp).values())
    path = stale.write(b"data")
    assert path not in old and path.read_bytes() == b"data"
    assert spares_in(tmp) == {}  # the stale spares were removed, not left
    path.unlink()

    spares = SpareFiles(tmp, keep=2)
    spares.refill()
    for spare in tmp.iterdir():
        spare.unlink()  # a cleanup run with a tiny TMAIL_ORPHAN_GRACE
    path, fd = spares.open(".spool")
    os.close(fd)
    assert path.name.endswith(".spool") and path.exists()


def test_a_spare_taken_is_named_for_its_use(tmp_path: Path) -> None:
    """In tmp/, ``*.new`` is only ever an empty spare: a message being received is a
    ``.spool`` whether its file was made ahead or not."""
    spares = SpareFiles(tmp_path, keep=1)
    spares.refill()
    [spare] = spares_in(tmp_path).values()
    path, fd = spares.open(".spool")
    os.close(fd)
    assert path.suffix == ".spool" and not spare.exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
