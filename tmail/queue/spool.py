"""A message written into the queue's ``tmp/`` as it arrives.

The SMTP receiver must not hold a whole DATA phase in memory (50 sessions of 20 MiB each are
a gigabyte). A :class:`Spool` takes the message in chunks, writes it through a small buffer
into a temp file (created with the first buffer-full: a message smaller than the buffer is
written at enqueue, off the receiver's event loop), and computes on the way what the record
needs: the SHA-1 ``Key``, the size and a bounded copy of the header block (for
``Message-ID``). At enqueue the file is ``fsync``ed and renamed into ``messages/``: the
bytes are never read back or copied.

A spool file left by a crash is an ordinary ``tmp/`` leftover: ``QueueStore.cleanup`` removes
it after the grace period (its mtime moves at every write, so a live spool is never taken).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tmail import fsutil
from tmail.message import HEADER_LIMIT, header_end
from tmail.queue.errors import QueueWriteError
from tmail.queue.spares import SpareFiles

BUFFER_SIZE = 64 * 1024


@dataclass(frozen=True)
class SpooledFile:
    """A complete spool file, handed over to the store (which moves or removes it)."""

    path: Path
    key: str
    size: int
    headers: bytes  # the header block, at most HEADER_LIMIT bytes


class Spool:
    """A message being received, written into ``<queue>/tmp/`` as it arrives."""

    def __init__(self, tmp_dir: Path, *, buffer_size: int = BUFFER_SIZE,
                 spares: SpareFiles | None = None) -> None:
        self._tmp_dir = tmp_dir
        self._spares = spares  # the store's files made ahead, if any
        self._path: Path | None = None  # the file, once the first buffer-full is written
        self._fd: int | None = None
        self._done = False  # discarded or taken: no more writes
        self._buffer_size = buffer_size
        self._buffer = bytearray()
        self._sha1 = hashlib.sha1()
        self._size = 0
        self._headers = bytearray()
        self._headers_done = False
        self._failed: QueueWriteError | None = None  # a failed write: the file is not whole

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes) -> None:
        """Append ``data``; raises :class:`QueueWriteError` (``errno`` kept) on failure."""
        if self._done:
            raise ValueError("write to a spool that was discarded or enqueued")
        if self._failed is not None:
            raise self._failed
        self._sha1.update(data)
        self._size += len(data)
        if not self._headers_done:
            self._keep_headers(data)
        if not self._buffer and len(data) >= self._buffer_size:
            self._write_out(data)  # a big chunk goes straight to the file, uncopied
            return
        self._buffer += data
        if len(self._buffer) >= self._buffer_size:
            self._flush()

    def discard(self) -> None:
        """Give the message up: close and remove the temp file. Idempotent."""
        self._done = True
        self._close()
        if self._path is not None:
            path, self._path = self._path, None
            fsutil.unlink_quietly(path)

    def take(self) -> SpooledFile:
        """Flush and close the file and hand it over: from now on the caller owns it (moves
        it into place or removes it) and this spool is consumed."""
        if self._done:
            raise ValueError("this spool was already discarded or enqueued")
        try:
            if self._failed is not None:
                raise self._failed  # never queue a message with a hole in it
            self._flush()
            if self._fd is None:
                self._open()  # an empty message still gets its file
        except BaseException:
            self.discard()
            raise
        self._done = True
        self._close()
        assert self._path is not None
        path, self._path = self._path, None
        headers = bytes(self._headers)
        return SpooledFile(path, self._sha1.hexdigest(), self._size, headers)

    def _keep_headers(self, data: bytes) -> None:
        """Copy bytes until the header block ends (an empty line) or HEADER_LIMIT is reached."""
        start = max(0, len(self._headers) - 3)  # a separator may straddle two chunks
        self._headers += data[: HEADER_LIMIT - len(self._headers)]
        end = header_end(self._headers, start)
        if end is not None:
            del self._headers[end:]
            self._headers_done = True
        elif len(self._headers) >= HEADER_LIMIT:
            self._headers_done = True

    def _flush(self) -> None:
        if self._buffer:
            self._write_out(self._buffer)
            self._buffer = bytearray()

    def _open(self) -> None:
        """Create the file: only when the first buffer-full is written out (or at ``take``,
        in the enqueue's thread), so that a small message costs its event loop no file
        creation, which can wait for the journal commit of another session's fsync."""
        try:
            if self._spares is not None:
                self._path, self._fd = self._spares.open(".spool")
                return
            path = fsutil.temp_name(self._tmp_dir, ".spool")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               fsutil.FILE_MODE)
        except OSError as exc:
            self._failed = _write_error(exc)
            raise self._failed from exc
        self._path = path

    def _write_out(self, data: bytes | bytearray) -> None:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        try:
            fsutil.write_all(self._fd, data)
        except OSError as exc:
            self._failed = _write_error(exc)
            raise self._failed from exc

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:  # a spool dropped without enqueue or discard leaves no file
        if getattr(self, "_path", None) is not None:
            with contextlib.suppress(Exception):  # cleanup() takes it if this cannot
                self.discard()


def _write_error(exc: OSError) -> QueueWriteError:
    return QueueWriteError(exc.errno, f"cannot write to the queue: {exc.strerror or exc}")
