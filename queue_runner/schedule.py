"""When each record of this runner falls due: a heap of (due, Id), as Postfix's qmgr keeps
its deferred queue in time order instead of rescanning it.

Every source of a due time feeds it: the full sweep, each deferral the runner makes, and the
notify hints (enqueue, release, retry). The daemon sleeps until the earliest entry and reads
only the records that fall due, so a retry is on time however long the sweep interval is,
and 100,000 deferred records cost nothing between sweeps.
"""

from __future__ import annotations

import heapq
import threading
import time


class Schedule:
    """Due times by record Id; thread-safe (deliveries defer records from pool threads).

    Each Id has one current due time; heap entries that no longer match it are stale and
    dropped when they reach the top, so rescheduling is O(log n) with no search.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._due)

    def __contains__(self, record_id: object) -> bool:
        with self._lock:
            return record_id in self._due

    def add(self, record_id: int, due: float) -> None:
        """Schedule ``record_id`` at ``due`` (Unix time), replacing any earlier entry."""
        with self._lock:
            if self._due.get(record_id) == due:
                return
            self._due[record_id] = due
            heapq.heappush(self._heap, (due, record_id))
            if len(self._heap) > 2 * len(self._due) + 1024:  # mostly stale: rebuild
                self._heap = [(when, rid) for rid, when in self._due.items()]
                heapq.heapify(self._heap)

    def discard(self, record_id: int) -> None:
        with self._lock:
            self._due.pop(record_id, None)

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is scheduled."""
        with self._lock:
            self._drop_stale()
            return self._heap[0][0] if self._heap else None

    def seconds_until_next(self, default: float) -> float:
        due = self.next_due()
        return default if due is None else max(0.0, min(default, due - time.time()))

    def pop_due(self, moment: float | None = None) -> list[int]:
        """Take out every Id due at ``moment`` (default: now), earliest first."""
        moment = time.time() if moment is None else moment
        taken = []
        with self._lock:
            while True:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > moment:
                    return taken
                _, record_id = heapq.heappop(self._heap)
                del self._due[record_id]
                taken.append(record_id)

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
