"""Where everything lives in the queue tree (see docs/queue-format.md for the ops view).

::

    queue/
      next-id                           the id counter (decimal text), flock'd to allocate
      notify                            hints "<Id> <Uuid> <due>" the daemon runner watches
      messages/<u0u1u2>/<Uuid>.eml      the raw message, found from its Uuid
      records/<a>/<b>/<Id>.json         one record per recipient, found from its Id
      records/<a>/<b>/<Id>.eml          a hard link to the raw message, one per record
      tmp/                              files being written (never read by anyone)
      quarantine/                       records moved aside because they could not be used

``<a>`` is ``Id // 1,000,000`` and ``<b>`` is ``Id // 1,000 % 1,000``, both three digits, so a
leaf directory never holds more than 2,000 entries and walking the tree in name order walks
the records in ``Id`` order. ``<u0u1u2>`` are the first three hex digits of the Uuid: the
4,096 directories are all created by the SMTP receiver at start-up, so that accepting never
pays for a ``mkdir`` (any other writer makes the one it needs), and hold about 250 messages
each at a million messages.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# Ids are positive and below 2**62, so that the lock offsets (2*Id + 1) fit in an off_t and a
# file name never gets long: an id outside is simply not found.
MAX_ID = 2**62


def valid_id(record_id: int) -> bool:
    return 0 < record_id <= MAX_ID


def record_ids(names: list[str]) -> list[int]:
    """The ids of the ``<Id>.json`` names among a leaf's entries (no regex per file: this runs
    for every record of a listing)."""
    return [int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit()]
UUID_PATTERN = re.compile(r"^[0-9a-f]{40}$")


@functools.lru_cache(maxsize=4096)
def _leaf(records: Path, block: int) -> Path:
    """``records/<a>/<b>`` of the ids ``block * 1000`` to ``block * 1000 + 999`` (made once:
    pathlib's joins were a tenth of the receiver's Python time at one session)."""
    return records / f"{block // 1000:03d}" / f"{block % 1000:03d}"


@dataclass(frozen=True)
class QueueLayout:
    root: Path

    @cached_property
    def counter(self) -> Path:
        return self.root / "next-id"

    @cached_property
    def notify(self) -> Path:
        return self.root / "notify"

    @cached_property
    def records(self) -> Path:
        return self.root / "records"

    @cached_property
    def messages(self) -> Path:
        return self.root / "messages"

    @cached_property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @cached_property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def directories(self) -> tuple[Path, ...]:
        return (self.records, self.messages, self.tmp, self.quarantine)

    def record_dir(self, record_id: int) -> Path:
        return _leaf(self.records, record_id // 1000)

    def record_json(self, record_id: int) -> Path:
        return self.record_dir(record_id) / f"{record_id}.json"

    def record_raw(self, record_id: int) -> Path:
        return self.record_dir(record_id) / f"{record_id}.eml"

    def message_dir(self, uuid: str) -> Path:
        return self.messages / uuid[0:3]

    def message_dirs(self) -> list[Path]:
        return [self.messages / f"{n:03x}" for n in range(16**3)]

    def message_raw(self, uuid: str) -> Path:
        return self.message_dir(uuid) / f"{uuid}.eml"
