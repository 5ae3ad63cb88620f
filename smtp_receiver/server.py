"""The listening server: a :class:`~smtp_receiver.connection.Connection` per client, admitted
against the session limits, then served by a :class:`~smtp_receiver.session.Session`.

The SMTP protocol is our own (``session.py`` and ``connection.py``, about 500 lines):
aiosmtpd's ``SMTP`` class cost as much CPU per connection as the message itself (its
constructor inspects the protocol and the handler with ``inspect``/``dir()``, its command
loop sends every reply line with its own ``send``, and a StreamReader, a StreamWriter and a
task come with every connection); see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from smtp_receiver.connection import Connection
from smtp_receiver.handler import ReceiverHandler
from smtp_receiver.limits import SessionLimits
from smtp_receiver.session import Service, Session
from smtp_receiver.state import SessionState
from smtp_receiver.submission import Listener
from tmail.config import Config

log = logging.getLogger("smtp_receiver")


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(config: Config, handler: ReceiverHandler, context: ssl.SSLContext,
                listeners: list[Listener]) -> list[asyncio.Server]:
    """Listen on every listener; SO_REUSEPORT lets several receiver processes share each.
    One set of session limits covers them all (``TMAIL_SMTP_MAX_SESSIONS`` is per process)."""
    limits = SessionLimits(config.smtp_max_sessions, config.smtp_max_sessions_per_ip,
                           exempt=handler.policy.in_relay_networks)
    loop = asyncio.get_running_loop()
    servers = []
    for listener in listeners:
        # 465: TLS from the first byte, the handshake before the session (and its limits);
        # 25 and 587 offer STARTTLS.
        service = Service(config, handler, limits, listener,
                          None if listener.implicit_tls else context)
        servers.append(await loop.create_server(
            _factory(service),
            host=listener.bind.host,
            port=listener.bind.port,
            family=socket.AF_INET6 if ":" in listener.bind.host else socket.AF_INET,
            reuse_port=True,
            backlog=1024,
            ssl=context if listener.implicit_tls else None,
            ssl_handshake_timeout=config.smtp_timeout if listener.implicit_tls else None,
        ))
    return servers


def _factory(service: Service) -> Callable[[], Connection]:
    tasks: set[asyncio.Task[None]] = set()  # a running session is referenced until its end

    def start(connection: Connection) -> None:
        ip = connection.peer_ip()
        refusal = service.limits.admit(ip)
        assert connection.transport is not None
        if refusal is not None:
            log.warning("client=%s: connection refused: %s", ip, refusal.text)
            service.handler.refused(refusal.reason)
            connection.transport.write(
                f"421 4.7.0 {service.config.hostname} {refusal.text}\r\n".encode())
            connection.transport.close()
            return
        state = SessionState(ip, submission=service.listener.submission,
                             tls=service.listener.implicit_tls)
        task = asyncio.get_running_loop().create_task(
            Session(service, connection, state).run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

        def lost() -> None:
            service.limits.release(ip)
            task.cancel()  # a session waiting on anything (a look-up, a commit) ends

        connection.on_lost = lost

    return lambda: Connection(start)
