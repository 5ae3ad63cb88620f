"""A real SMTP sink on loopback whose replies each test scripts."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    session: int
    at: float


@dataclass
class Script:
    """Replies by recipient (default 250), for DATA, and a delay before DATA's reply."""

    rcpt: dict[str, str] = field(default_factory=dict)
    data: str = "250 2.0.0 Ok: queued"
    delay: float = 0.0
    drop: bool = False


class SinkHandler:
    def __init__(self) -> None:
        self.script = Script()
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.sessions = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handle_EHLO hook
        with self.lock:
            self.sessions += 1
            session.sink_id = self.sessions  # type: ignore[attr-defined]
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        reply = self.script.rcpt.get(address, "250 2.1.5 Ok")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        if self.script.drop:
            server.transport.close()
            return "421 gone"
        if self.script.data.startswith("2"):
            with self.lock:
                self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              envelope.original_content or b"",
                                              getattr(session, "sink_id", 0), time.monotonic()))
        return self.script.data


class Sink:
    def __init__(self, idle_timeout: float = 300.0) -> None:
        """``idle_timeout``: the server drops a session idle that long, as real MTAs do."""
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     timeout=idle_timeout)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def route(self) -> str:
        return f"*=127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)
