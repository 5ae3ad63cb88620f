"""Per-record kernel locks: Linux open-file-description (OFD) byte-range locks.

Why OFD locks and not ``flock`` or classic ``fcntl`` locks:

* they die with the open file, hence with the process: a runner killed with SIGKILL never
  leaves a record locked, so nothing is ever stuck "in delivery";
* unlike classic POSIX ``fcntl`` locks they belong to the open file, not to the process, so
  two threads of one gunicorn worker or runner exclude each other, and closing some other
  descriptor of the same file does not silently drop the lock;
* unlike ``flock`` they cover byte ranges, so every record of a message can be locked on the
  message's one inode (its ``<Id>.eml`` link) with no lock file of its own.

Each record ``Id`` owns two bytes of its message's inode (locks beyond the end of a file are
allowed and cost nothing):

* byte ``2*Id``     the *mutation* lock, held briefly by whoever rewrites or removes the record;
* byte ``2*Id + 1`` the *delivery claim*, held by a runner for the whole delivery attempt.

``/proc/locks`` lists them as ``OFDLCK`` for ops who want to see who holds what.
"""

from __future__ import annotations

import fcntl
import os
import struct

# struct flock on Linux (x86_64 and aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid, padded to 32 bytes. l_pid must be 0 for OFD locks.
_FLOCK = struct.Struct("hhxxxxqqi4x")


def _flock(lock_type: int, start: int) -> bytes:
    return _FLOCK.pack(lock_type, os.SEEK_SET, start, 1, 0)


def mutation_byte(record_id: int) -> int:
    return 2 * record_id


def claim_byte(record_id: int) -> int:
    return 2 * record_id + 1


def acquire(fd: int, byte: int, *, wait: bool) -> bool:
    """Take the exclusive lock on ``byte`` of ``fd``; ``False`` if busy and ``wait`` is false."""
    command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, command, _flock(fcntl.F_WRLCK, byte))
    except (BlockingIOError, PermissionError):
        return False
    return True


def release(fd: int, byte: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, byte))


def is_locked(fd: int, byte: int) -> bool:
    """Whether another open file holds ``byte`` (our own locks on ``fd`` do not count)."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
    return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK
