"""Housekeeping of the queue tree: records set aside (quarantine) and leftovers of crashes.

Neither is on a delivery's path. A record file that is not a record, or a record whose raw
message is gone, is moved to ``quarantine/`` with a ``.reason`` file, never deleted: ops
decide (docs/queue-format.md). Leftovers of an interrupted write (a temp file, a record
``.eml`` link without its ``.json``, a raw message with no record left) are harmless and
removed only after a grace period, so that cleaning never races a write in progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tmail import fsutil
from tmail.queue.layout import QueueLayout
from tmail.queue.record import now
from tmail.queue.scan import Scanner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinedRecord:
    id: int
    path: Path
    reason: str
    quarantined_at: datetime


class Housekeeping:
    """Quarantine and cleanup over one queue tree (the store's ``quarantine``,
    ``quarantined`` and ``cleanup`` are these)."""

    def __init__(self, layout: QueueLayout, scan: Scanner) -> None:
        self.layout = layout
        self._scan = scan

    def quarantine(self, record_id: int, reason: str) -> None:
        """Move an unusable record aside (never delete it) and say so in the log.

        When it cannot be moved (another user's directory), it is left where it is and
        reported once: readers skip it either way.
        """
        target = self.layout.quarantine
        moved = False
        try:
            for path in (self.layout.record_json(record_id), self.layout.record_raw(record_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, target / path.name)
                    moved = True
            if moved:
                (target / f"{record_id}.reason").write_text(f"{now().isoformat()} {reason}\n")
                fsutil.fsync_dirs([target, self.layout.record_dir(record_id)])
        except OSError as exc:
            log.error("queue record %d cannot be quarantined (%s): %s", record_id, exc, reason)
            return
        if moved:
            log.error("queue record %d quarantined: %s", record_id, reason)

    def quarantined(self) -> list[QuarantinedRecord]:
        found = []
        for entry in self._scan.entries(self.layout.quarantine):
            stem, _, suffix = entry.name.partition(".")
            if suffix != "reason" or not stem.isdigit():
                continue
            try:
                stamp, _, reason = Path(entry.path).read_text().strip().partition(" ")
                moment = datetime.fromisoformat(stamp)
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", entry.path, exc)
                continue
            found.append(QuarantinedRecord(id=int(stem), path=Path(entry.path).with_suffix(
                ".json"), reason=reason, quarantined_at=moment))
        return sorted(found, key=lambda item: item.id)

    def cleanup(self, grace: float) -> int:
        """Remove crash leftovers older than ``grace`` seconds; returns how many.

        Leftovers: temp files (spools of a killed receiver too), record ``.eml`` links without
        a ``.json`` (a removal cut short), and raw messages whose only name is their Uuid (an
        enqueue cut short). One that cannot be removed is left for the next cleanup.
        """
        deadline = now().timestamp() - grace
        removed = self._remove_all(entry for entry in self._scan.entries(self.layout.tmp)
                                   if _older(entry, deadline))
        for top in self._scan.numeric_dirs(self.layout.records):
            for leaf in self._scan.numeric_dirs(top):
                removed += self._remove_all(
                    entry for entry in self._scan.entries(leaf)
                    if entry.name.endswith(".eml") and _older(entry, deadline)
                    and not os.path.lexists(entry.path[: -len(".eml")] + ".json")
                )
        # Last, as removing record links above can leave a message with its Uuid name only.
        for leaf in self._scan.entries(self.layout.messages):
            removed += self._remove_all(entry for entry in self._scan.entries(Path(leaf.path))
                                        if _older(entry, deadline, only_link=True))
        if removed:
            log.warning("queue cleanup removed %d leftovers of interrupted writes", removed)
        return removed

    def _remove_all(self, entries: Iterable[os.DirEntry[str]]) -> int:
        removed = 0
        for entry in entries:
            try:
                removed += fsutil.unlink_quietly(entry.path)
            except OSError as exc:  # someone else's: left for them, reported once
                self._scan.unreadable.note(entry.path, entry.path, exc)
        return removed


def _older(entry: os.DirEntry[str], deadline: float, *, only_link: bool = False) -> bool:
    """Whether ``entry`` was last changed before ``deadline`` (and, with ``only_link``, has
    no other name left); a file gone meanwhile is not a leftover."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return info.st_mtime < deadline and (not only_link or info.st_nlink <= 1)
