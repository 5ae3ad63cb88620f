"""Named fault points, so that tests can break a real process at an exact instant.

Crash safety is a promise about what the disk looks like when a process dies *between* two
system calls; a mock cannot show that. A test starts a subprocess with ``TMAIL_FAULT=<name>``
and the process sends itself SIGKILL when it reaches ``fault_point("<name>")``. Unset (always,
outside tests) it costs one comparison. This is the only setting read outside ``config.py``:
it is not configuration, and it must work in code that has no ``Config`` at hand.

In-process tests can also make a fault point *raise* (:func:`raising`): that is how they check
that an exception at any step, not only a crash, leaves nothing half-done behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

_ARMED = os.environ.get("TMAIL_FAULT", "")
_raising: dict[str, list[BaseException]] = {}
_mutex = threading.Lock()


def fault_point(name: str) -> None:
    if _ARMED and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
    if _raising:
        _raise_if_armed(name)


def _raise_if_armed(name: str) -> None:
    with _mutex:
        errors = _raising.get(name)
        error = errors.pop() if errors else None
    if error is not None:
        raise error


@contextlib.contextmanager
def raising(name: str, error: BaseException, times: int = 1) -> Iterator[None]:
    """Within this block, the next ``times`` passes through ``fault_point(name)`` raise
    ``error`` (in this process, any thread)."""
    with _mutex:
        _raising[name] = [error] * times
    try:
        yield
    finally:
        with _mutex:
            _raising.pop(name, None)
