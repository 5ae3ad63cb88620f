"""Crash-safe file writing shared by the queue and Maildir delivery.

The rule everywhere: write a temporary file on the same file system, ``fsync`` it, ``rename``
(or ``link``) it into place, then ``fsync`` the directory so that the new name survives a crash.
A reader therefore sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from tmail.faults import fault_point

FILE_MODE = 0o640


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(paths: Iterable[Path | str]) -> None:
    """``fsync`` each distinct directory once (callers often touch the same leaf many times)."""
    for path in dict.fromkeys(paths):
        fsync_dir(path)


def temp_name(tmp_dir: Path, suffix: str = "") -> Path:
    """A unique name in ``tmp_dir``; the pid in it tells ops which process left it behind."""
    return tmp_dir / f"{os.getpid()}.{secrets.token_hex(8)}{suffix}"


def write_temp(tmp_dir: Path, data: bytes, *, sync: bool = True, suffix: str = "") -> Path:
    """Write ``data`` to a new temporary file in ``tmp_dir`` and (by default) ``fsync`` it.

    Callers that write several files may pass ``sync=False`` and call :func:`fsync_file` on
    each later, so that the disk sees one burst of writes before the flushes.
    """
    path = temp_name(tmp_dir, suffix)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)
    return path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new one."""
    tmp = write_temp(tmp_dir, data)
    fault_point("replace:temp-written")
    try:
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def unlink_quietly(path: Path | str) -> bool:
    """Remove ``path``; a missing file is fine (another process won the race), other errors
    propagate. Returns whether this call removed it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def makedirs(path: Path) -> None:
    """``mkdir -p`` that makes each new directory's entry durable in its parent."""
    if path.is_dir():
        return
    makedirs(path.parent)
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        return
    except OSError as exc:  # pragma: no cover - a race with a concurrent rmdir is not expected
        if exc.errno != errno.EEXIST:
            raise
    fsync_dir(path.parent)
