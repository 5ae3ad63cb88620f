"""``python -m smtp_receiver``: listen on TMAIL_SMTP_BIND until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
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
    log.info("listening on %s as %s", config.smtp_bind, config.hostname)
    await stop.wait()
    server.close()
    await server.wait_closed()
    committer.close()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    config = start("smtp_receiver")
    if config is None:
        return 2
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
