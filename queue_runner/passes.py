"""Delivery passes, and what an attempt reads once per pass rather than once per attempt.

A *pass* is one batch of attempts started together: a sweep, the records that fell due at
one wake of the daemon, a ``--once`` run. Every attempt needs the directory's local domains
(local or remote?) and, for SMTP, the routes in force. Reading them costs a database round
trip each (about 0.4 ms of CPU apiece with SQLite, as much as the rest of a small SMTP
delivery's bookkeeping), so each is read by the first attempt of a pass that needs it and
shared by the others. A change made through the API or the CLI applies from the next pass:
the daemon's next wake, milliseconds later under load, or the next sweep.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

NO_PASS = 0  # an attempt outside any pass (a transport used alone): always read afresh

_numbers = itertools.count(1)


def new_pass() -> int:
    """The number of a new pass; numbers only grow, across every runner of the process."""
    return next(_numbers)


class PerPass(Generic[T]):
    """A value read at most once per pass (``read`` raising is not remembered: the next
    attempt reads again).

    Passes overlap (the attempts of one wake still run when the next wake starts its own):
    a value read for a later pass serves an earlier one too (it is only fresher), so two
    overlapping passes never read in turns.
    """

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._pass = NO_PASS
        self._value: T | None = None

    def get(self, number: int) -> T:
        if number == NO_PASS:
            return self._read()
        with self._lock:  # the other attempts of the pass wait for the first one's read
            if self._pass >= number:
                return self._value  # type: ignore[return-value]
            value = self._read()
            self._pass, self._value = number, value
            return value
