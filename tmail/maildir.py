"""Local delivery into a Maildir, with a Maildir++ quota.

The Maildir rules make delivery safe without locks: the message is written under a unique
name in ``tmp/``, ``fsync``ed, then renamed into ``new/``, so a mail reader (Dovecot) never
sees a partial message. The quota is kept in Maildir++'s ``maildirsize`` file (a quota line
then one "<bytes> <count>" line per delivery), so checking it never walks a big mailbox; the
file is rebuilt from the directory when it is missing or has grown long, as the spec says.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tmail import fsutil

log = logging.getLogger(__name__)

_COUNTER = itertools.count()
_MAILDIRSIZE_MAX = 5120  # bytes; past this the file is recalculated


class QuotaExceeded(Exception):
    """The mailbox is full; the runner decides whether that is temporary or permanent."""


@dataclass(frozen=True)
class Delivered:
    path: Path
    size: int


def ensure_maildir(maildir: Path) -> None:
    """Create the Maildir (and the home above it) for a first delivery, durably: each new
    directory's entry is ``fsync``ed into its parent, up to a directory that existed. Else a
    crash could take the new mailbox, and the first message in it, after the runner removed
    the message from the queue."""
    subdirs = [maildir / sub for sub in ("tmp", "new", "cur")]
    if all(path.is_dir() for path in subdirs):
        return
    for path in (maildir, *subdirs):
        fsutil.makedirs(path, mode=0o700)


def local_copy(raw: bytes, return_path: str, delivered_to: str) -> bytes:
    """The message as stored locally: our two headers on top, LF line endings (Maildir)."""
    headers = f"Return-Path: <{return_path}>\nDelivered-To: {delivered_to}\n".encode()
    return headers + raw.replace(b"\r\n", b"\n")


def unique_name(size: int) -> str:
    now = time.time()
    seconds, micro = int(now), int((now % 1) * 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{seconds}.M{micro}P{os.getpid()}Q{next(_COUNTER)}.{host},S={size}"


def deliver(maildir: Path, message: bytes, quota: int | None) -> Delivered:
    """Write ``message`` into ``maildir/new``; raises :class:`QuotaExceeded` when full."""
    ensure_maildir(maildir)
    size = len(message)
    if quota is not None:
        used = current_usage(maildir, quota)
        if used + size > quota:
            raise QuotaExceeded(f"mailbox full: {used} + {size} bytes > quota {quota}")
    name = unique_name(size)
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(message)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    final = maildir / "new" / name
    os.rename(tmp, final)
    fsutil.fsync_dir(maildir / "new")
    if quota is not None:
        _append_usage(maildir, size, 1)
    return Delivered(final, size)


def current_usage(maildir: Path, quota: int) -> int:
    """Bytes used, from ``maildirsize`` (rebuilt when missing, stale or too long)."""
    path = maildir / "maildirsize"
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    lines = text.splitlines()
    if not lines or lines[0] != f"{quota}S" or len(text) > _MAILDIRSIZE_MAX:
        return _recalculate(maildir, quota)
    total = 0
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[0].lstrip("-").isdigit():
            total += int(parts[0])
    return total


def _recalculate(maildir: Path, quota: int) -> int:
    total = count = 0
    for sub in ("new", "cur"):
        for entry in os.scandir(maildir / sub):
            total += _size_of(entry)
            count += 1
    tmp = maildir / "tmp" / f"maildirsize.{os.getpid()}.{next(_COUNTER)}"
    tmp.write_text(f"{quota}S\n{total} {count}\n")
    os.rename(tmp, maildir / "maildirsize")
    return total


def _size_of(entry: os.DirEntry[str]) -> int:
    """The size from the ``,S=`` in the name when present (cheap), else from ``stat``."""
    for part in entry.name.split(":")[0].split(","):
        if part.startswith("S=") and part[2:].isdigit():
            return int(part[2:])
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def _append_usage(maildir: Path, size: int, count: int) -> None:
    """Count a delivery in ``maildirsize``. The message is in ``new/`` already: a failure
    here (a full file system) must not fail the delivery (it would be delivered twice), so
    the file is removed instead, and rebuilt from the directory at the next delivery."""
    path = maildir / "maildirsize"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            line = f"{size} {count}\n".encode()
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write")
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("cannot update %s (%s); it will be recalculated", path, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
