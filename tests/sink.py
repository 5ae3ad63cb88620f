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
class Attempt:
    """One DATA the sink answered, accepted or not (wall-clock time, to compare with the
    queue's ``NextDeliveryScheduledAt``)."""

    message_id: bytes
    at: float
    reply: str


@dataclass
class Script:
    """Replies by recipient (default 250), for DATA, and a delay before DATA's reply.

    ``first_data``: the reply to the first DATA of each message (by Message-ID), the
    following ones get ``data``. ``hold_after``: after that many accepted messages, DATA's
    reply waits until :meth:`Sink.release` (a runner is then stuck mid-delivery for sure).
    """

    rcpt: dict[str, str] = field(default_factory=dict)
    data: str = "250 2.0.0 Ok: queued"
    first_data: str | None = None
    delay: float = 0.0
    drop: bool = False
    hold_after: int | None = None


class SinkHandler:
    def __init__(self) -> None:
        self.script = Script()
        self.messages: list[Received] = []
        self.attempts: list[Attempt] = []
        self.mail_options: list[list[str]] = []
        self.lock = threading.Lock()
        self.sessions = 0
        self.gate = threading.Event()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handle_EHLO hook
        with self.lock:
            self.sessions += 1
            session.sink_id = self.sessions  # type: ignore[attr-defined]
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        with self.lock:
            self.mail_options.append(list(options))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        reply = self.script.rcpt.get(address, "250 2.1.5 Ok")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        script = self.script
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.hold_after is not None and len(self.messages) >= script.hold_after:
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        if script.drop:
            server.transport.close()
            return "421 gone"
        content = envelope.original_content or b""
        message_id = content.partition(b"Message-ID: <")[2].partition(b">")[0]
        with self.lock:
            seen = any(a.message_id == message_id for a in self.attempts)
            reply = script.data if seen or script.first_data is None else script.first_data
            self.attempts.append(Attempt(message_id, time.time(), reply))
            if reply.startswith("2"):
                self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              content, getattr(session, "sink_id", 0),
                                              time.monotonic()))
        return reply


class Sink:
    def __init__(self, idle_timeout: float = 300.0, smtputf8: bool = False) -> None:
        """``idle_timeout``: the server drops a session idle that long, as real MTAs do;
        ``smtputf8``: offer SMTPUTF8 (RFC 6531) and accept UTF-8 addresses."""
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     timeout=idle_timeout, enable_SMTPUTF8=smtputf8)

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

    @property
    def attempts(self) -> list[Attempt]:
        with self.handler.lock:
            return list(self.handler.attempts)

    def release(self) -> None:
        """Let DATA replies held by ``Script.hold_after`` go."""
        self.handler.gate.set()
