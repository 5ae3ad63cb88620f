"""``python -m smtp_receiver``: listen on TMAIL_SMTP_BIND until SIGTERM or SIGINT.

With TMAIL_SMTP_PROCESSES above 1 the receiver runs that many worker processes, each with its
own event loop and its own listening socket on the same port (SO_REUSEPORT: the kernel
spreads connections over them), the way Postfix runs many smtpd processes. One event loop is
bound to one core; SMTP parsing and the queue's file work are CPU work. The parent only
starts the workers, restarts one that dies, and passes SIGTERM on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from smtp_receiver.committer import GroupCommitter
from smtp_receiver.handler import ReceiverHandler
from smtp_receiver.server import serve, tls_context
from tmail import config as tmail_config
from tmail.process import start
from tmail.queue import QueueStore
from tmail.tls import ensure_certificate
from tmail.users import UserStore

log = logging.getLogger("smtp_receiver")
RESTART_DELAY = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


async def run(config: tmail_config.Config) -> None:
    cert, key = ensure_certificate(config)
    store = QueueStore(config.queue_dir, id_block=64)
    committer = GroupCommitter(store)
    users = UserStore(config.users_db, config.mailboxes_dir, config.default_quota)
    handler = ReceiverHandler(config, users, committer)
    server = await serve(config, handler, tls_context(str(cert), str(key)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s as %s (pid %d)", config.smtp_bind, config.hostname, os.getpid())
    await stop.wait()
    server.close()
    await server.wait_closed()
    committer.close()
    handler.counters.flush()
    log.info("stopped")


def serve_one(config: tmail_config.Config) -> None:
    """One worker: one event loop. (uvloop was tried: no gain measurable over the noise here,
    as the time goes to SMTP parsing in Python and to the queue's file work.)"""
    asyncio.run(run(config))


def supervise(config: tmail_config.Config, processes: int) -> None:
    """Start ``processes`` workers, restart any that dies, stop them all on SIGTERM/SIGINT."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            _kill(pid, signal.SIGTERM)

    children: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    for _ in range(processes):
        children.add(_fork_worker(config))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping:
            log.error("worker %d exited (status %d); starting another", pid, status)
            time.sleep(RESTART_DELAY)
            if not stopping:
                children.add(_fork_worker(config))


def _fork_worker(config: tmail_config.Config) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _die_with_parent()
            serve_one(config)
        except BaseException:
            log.exception("worker failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _die_with_parent() -> None:
    """A worker whose parent was killed (SIGKILL, OOM) must not keep the port: Linux sends
    it SIGTERM then (prctl PR_SET_PDEATHSIG), and it stops like on a normal SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: Sequence[str] | None = None) -> int:
    config = start("smtp_receiver")
    if config is None:
        return 2
    ensure_certificate(config)  # once, before the workers start
    if config.smtp_processes == 1:
        serve_one(config)
    else:
        supervise(config, config.smtp_processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
