"""``python -m smtp_receiver``: listen on TMAIL_SMTP_BIND (and the submission ports,
TMAIL_SUBMISSION_BIND and TMAIL_SUBMISSIONS_BIND, when set) until SIGTERM or SIGINT.

With TMAIL_SMTP_PROCESSES above 1 the receiver runs that many worker processes
(:mod:`tmail.workers`), each with its own event loop and its own listening socket on the
same ports (SO_REUSEPORT: the kernel spreads connections over them), the way Postfix runs
many smtpd processes. One event loop is bound to one core; SMTP parsing and the queue's file
work are CPU work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence

from smtp_receiver.committer import GroupCommitter
from smtp_receiver.handler import ReceiverHandler
from smtp_receiver.server import serve, tls_context
from smtp_receiver.submission import listeners
from tmail import config as tmail_config
from tmail import workers
from tmail.dkim.signing import signer_for
from tmail.process import start
from tmail.queue import QueueStore
from tmail.tls import ensure_certificate
from tmail.users import open_store

log = logging.getLogger("smtp_receiver")


async def run(config: tmail_config.Config) -> None:
    store = QueueStore(config.queue_dir, id_block=64, node=config.node,
                       signer=signer_for(config))
    committer = GroupCommitter(store)
    users = open_store(config)
    handler = ReceiverHandler(config, users, store, committer)
    context = tls_context(str(config.tls_cert_path), str(config.tls_key_path))
    servers = await serve(config, handler, context, listeners(config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s as %s (pid %d)", ", ".join(map(str, listeners(config))),
             config.hostname, os.getpid())
    await stop.wait()
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    committer.close()
    handler.counters.flush()
    log.info("stopped")


def raise_fd_limit(config: tmail_config.Config) -> None:
    """Each session holds a socket (and, in DATA, a spool file): make sure the soft limit on
    open files allows TMAIL_SMTP_MAX_SESSIONS of them, as far as the hard limit lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * config.smtp_max_sessions + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            log.warning("open files limited to %d: fewer than TMAIL_SMTP_MAX_SESSIONS=%d "
                        "sessions may be served", new, config.smtp_max_sessions)


def serve_one(config: tmail_config.Config) -> None:
    """One worker: one event loop. (uvloop was tried: no gain measurable over the noise here,
    as the time goes to SMTP parsing in Python and to the queue's file work.)"""
    asyncio.run(run(config))


def main(argv: Sequence[str] | None = None) -> int:
    config = start("smtp_receiver")
    if config is None:
        return 2
    raise_fd_limit(config)
    ensure_certificate(config)  # once, before the workers start (they read its files)
    if config.smtp_processes == 1:
        serve_one(config)
    else:
        workers.supervise(lambda _: serve_one(config), config.smtp_processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
