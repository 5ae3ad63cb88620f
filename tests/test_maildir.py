"""Local delivery under faults: new Maildirs are durable, a full file system defers."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from queue_runner.delivery import Runner
from tests.conftest import tmail_env
from tests.strace_helper import traced
from tmail import config as tmail_config
from tmail.config import Config
from tmail.queue import QueueStore, Status
from tmail.queue.record import now
from tmail.users import open_store

LOCAL = "local.test"
_MKDIR = re.compile(r'mkdir(?:at)?\((?:[^,]*, )?"([^"]+)", [0-7]+\)\s+= 0')
_FSYNC = re.compile(r"fsync\(\d+<([^>]+)>\)\s+= 0")


def message(size: int = 0) -> bytes:
    return (b"From: s@sender.test\r\nMessage-ID: <m@sender.test>\r\nSubject: hi\r\n\r\n"
            + b"x" * size + b"body\r\n")


def test_a_first_delivery_makes_every_new_directory_durable(tmp_path: Path) -> None:
    """Each directory created for a new mailbox (home, Maildir, tmp/new/cur) has its entry
    fsync'ed in its parent, as seen by strace in a real ``--once`` run."""
    env = tmail_env(tmp_path, TMAIL_LOCAL_DOMAINS=LOCAL)
    config = tmail_config.load(env)
    user = open_store(config).create(
        f"bob@{LOCAL}", "password1", have_mailbox=True)
    QueueStore(config.queue_dir).enqueue(message(), "s@sender.test", [f"bob@{LOCAL}"])
    trace = tmp_path / "strace.txt"
    traced(["-m", "queue_runner", "--once"], trace, "mkdir,mkdirat,fsync", env)
    assert len(list((user.maildir / "new").iterdir())) == 1
    text = trace.read_text()
    root = str(config.mailboxes_dir)
    created = [Path(p) for p in _MKDIR.findall(text) if p.startswith(root)]
    fsynced = {Path(p) for p in _FSYNC.findall(text)}
    assert user.maildir / "cur" in created and user.maildir.parent in created
    assert [d for d in created if d.parent not in fsynced] == []


@pytest.fixture
def small_mailboxes(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted as the mailboxes directory (unmounted whatever happens)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the test suite runs as root in CI)")
    mount = tmp_path / "mailboxes"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = b"\0" * 65536
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_mailbox_file_system_defers_and_delivers_once_space_is_back(
    tmp_path: Path, small_mailboxes: Path
) -> None:
    env = tmail_env(tmp_path, TMAIL_LOCAL_DOMAINS=LOCAL, TMAIL_MAILBOXES_DIR=str(small_mailboxes))
    config: Config = tmail_config.load(env)
    user = open_store(config).create(
        f"bob@{LOCAL}", "password1", have_mailbox=True, mailbox_quota="")
    store = QueueStore(config.queue_dir)
    [record] = store.enqueue(message(size=200_000), "s@sender.test", [f"bob@{LOCAL}"])
    filler = fill(small_mailboxes)
    runner = Runner.build(config)
    try:
        assert runner.run_once() == 1
        deferred = store.get(record.id)
        assert deferred is not None and deferred.status == Status.SCHEDULED
        assert deferred.last_error.startswith("452 4.3.1 mailbox file system full")
        for sub in ("new", "tmp", "cur"):  # nothing half-written anywhere
            assert not (user.maildir / sub).exists() or list((user.maildir / sub).iterdir()) == []
        filler.unlink()
        with store.locked(record.id) as locked:
            locked.write(locked.record.evolve(next_delivery_at=now() - timedelta(seconds=1)))
        assert runner.run_once() == 1
    finally:
        runner.shutdown()
    assert store.get(record.id) is None
    [delivered] = list((user.maildir / "new").iterdir())
    assert delivered.read_bytes().endswith(b"x" * 200_000 + b"body\n")
