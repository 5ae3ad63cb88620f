"""Crash-safe file writing shared by the queue and Maildir delivery.

The rule everywhere: write a temporary file on the same file system, ``fsync`` it, ``rename``
(or ``link``) it into place, then ``fsync`` the directory so that the new name survives a crash.
A reader therefore sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
    """``fsync`` each distinct directory once (callers often touch the same leaf many times),
    concurrently (see :func:`fsync_files`)."""
    _in_parallel(fsync_dir, list(dict.fromkeys(paths)))


def fsync_files(paths: Iterable[Path | str]) -> None:
    """``fsync`` every file, concurrently; returns when all are durable.

    Sequential fsyncs cost one journal commit each. Issued together, the file system (ext4's
    jbd2, XFS's log) folds them into a few commits: for a batch of messages written at once,
    that is most of the cost of group commit gone. Each file is still fsync'd before it is
    renamed into place; only the waiting is shared.
    """
    _in_parallel(fsync_file, list(paths))


def fsync_each(paths: Iterable[Path], *, directories: bool = False) -> dict[Path, OSError]:
    """``fsync`` every distinct file (or directory) concurrently, like :func:`fsync_files`,
    and return the ones that failed with their error instead of raising the first: a batch
    of messages can then fail only the messages whose files could not be made durable."""
    function = fsync_dir if directories else fsync_file
    unique = list(dict.fromkeys(paths))
    failed: dict[Path, OSError] = {}

    def attempt(path: Path | str) -> None:
        try:
            function(path)
        except OSError as exc:
            failed[Path(path)] = exc

    _in_parallel(attempt, unique)  # type: ignore[arg-type]
    return failed


_POOL_SIZE = 16
# Up to this many fsyncs run one after the other in the caller's thread: measured here
# (ext4, virtio disk), two fsyncs issued together take as long as in a row and cost 50 %
# more CPU (the hand-offs to pool threads and back, each contending for the GIL); sixteen
# together take 25 % less time than in a row.
_SEQUENTIAL_UP_TO = 4
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _in_parallel(function: Callable[[Path | str], None], paths: list[Path | str]) -> None:
    if len(paths) <= _SEQUENTIAL_UP_TO:
        for path in paths:
            function(path)
        return
    for future in [_executor().submit(function, path) for path in paths]:
        future.result()  # the first error propagates, after every fsync was started


def _executor() -> ThreadPoolExecutor:
    """One pool per process (a forked child must not use its parent's threads)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="fsync"))
        return _pool[1]


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
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)
    return path


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write all of ``data`` (``os.write`` may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new one."""
    tmp = write_temp(tmp_dir, data)
    try:
        fault_point("replace:temp-written")
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


def makedirs(path: Path, mode: int = 0o750) -> None:
    """``mkdir -p`` that makes each new directory's entry durable in its parent; ``mode``
    is for ``path`` itself (parents get 0o750), as ``mkdir -p -m`` does."""
    if path.is_dir():
        return
    makedirs(path.parent)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    except OSError as exc:  # pragma: no cover - a race with a concurrent rmdir is not expected
        if exc.errno != errno.EEXIST:
            raise
    fsync_dir(path.parent)
