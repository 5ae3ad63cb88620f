"""Worker processes under a small supervisor, shared by the receiver and the runner.

One Python process uses one core at a time, and both accepting and delivering mail are CPU
work here. The supervisor forks the workers, restarts one that dies (after a second, so a
worker that cannot start does not spin), and passes SIGTERM/SIGINT on; each worker dies with
a killed supervisor (PR_SET_PDEATHSIG), so that none is left holding a port or claims.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def default_count() -> int:
    """One worker per core, at most 4 (beyond that, the disk is the limit)."""
    return min(os.cpu_count() or 1, 4)


def supervise(work: Callable[[int], None], count: int) -> None:
    """Run ``work(index)`` in ``count`` worker processes until SIGTERM or SIGINT."""
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    for index in range(count):
        children[_fork(work, index)] = index
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        log.error("worker %d (pid %d) exited (status %d); starting another", index, pid, status)
        time.sleep(RESTART_DELAY)
        if not stopping:
            children[_fork(work, index)] = index


def _fork(work: Callable[[int], None], index: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        work(index)
    except BaseException:
        log.exception("worker %d failed", index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _die_with_parent() -> None:
    """Linux sends this process SIGTERM when its parent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
