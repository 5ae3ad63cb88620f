"""Named fault points, so that tests can kill a real process at an exact instant.

Crash safety is a promise about what the disk looks like when a process dies *between* two
system calls; a mock cannot show that. A test starts a subprocess with ``TMAIL_FAULT=<name>``
and the process sends itself SIGKILL when it reaches ``fault_point("<name>")``. Unset (always,
outside tests) it costs one comparison. This is the only setting read outside ``config.py``:
it is not configuration, and it must work in code that has no ``Config`` at hand.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("TMAIL_FAULT", "")


def fault_point(name: str) -> None:
    if _ARMED and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
