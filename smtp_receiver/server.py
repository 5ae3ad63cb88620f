"""The listening server: aiosmtpd's SMTP protocol with Postfix-like replies and limits.

aiosmtpd gives the protocol; this subclass adds what a public MX needs and aiosmtpd has no
option for: admission (sessions in total and per client IP), a deadline on every command
line and reply instead of one timer reset by each command, the error and junk-command
limits, ``451 4.3.0`` for any unexpected exception, and a streamed DATA phase
(:mod:`smtp_receiver.data`). The aiosmtpd internals it relies on are named where used:
``_reader`` (the StreamReader, read directly by DATA), ``_set_post_data_state`` (the reset
aiosmtpd's own DATA does), ``_getaddr`` (the address parser) and ``_tls_protocol``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, syntax

from smtp_receiver.data import Deadline, wire_chunks
from smtp_receiver.handler import ReceiverHandler
from smtp_receiver.limits import SessionLimits
from smtp_receiver.state import SessionState
from smtp_receiver.submission import Listener
from tmail.config import Config

log = logging.getLogger("smtp_receiver")

# aiosmtpd's own replies for checks it makes before our hooks, with enhanced status codes.
_REPLIES = {
    "553 5.1.3 Error: malformed address": "501 5.1.3 Bad address syntax",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed limit",
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Command line too long": "500 5.5.2 Error: command line too long",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO/EHLO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Already authenticated": "503 5.5.1 Error: already authenticated",
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 Error: SMTPUTF8 takes no arguments",
    "555 MAIL FROM parameters not recognized or not implemented":
        "555 5.5.4 Unsupported option",
    "555 RCPT TO parameters not recognized or not implemented":
        "555 5.5.4 Unsupported option",
}


# The common case of MAIL FROM/RCPT TO: <dot-atom@domain> then parameters. aiosmtpd parses
# every address with the email package's RFC 5322 parser, a tenth of the receiver's CPU
# under load; this match gives the same answer for these addresses, the rest still goes
# through the full parser.
_SIMPLE_ADDRESS = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)",
    re.DOTALL,
)


class BareNewline(Exception):
    """A command line ended in a bare LF or held a bare CR (smtpd_forbid_bare_newline)."""


class CommandReader:
    """aiosmtpd's StreamReader as its command loop sees it: every command line (and AUTH
    answer) must arrive whole within ``TMAIL_SMTP_TIMEOUT``, however slowly it trickles,
    and end in CRLF unless bare newlines are normalised.

    Attribute writes go to the real reader: aiosmtpd re-points it at the TLS transport
    after STARTTLS (``connection_made``).
    """

    __slots__ = ("_strict", "_timeout", "raw")

    def __init__(self, raw: asyncio.StreamReader, timeout: float, strict: bool) -> None:
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "_timeout", timeout)
        object.__setattr__(self, "_strict", strict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.raw, name, value)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        async with asyncio.timeout(self._timeout):
            line = await self.raw.readuntil(separator)
        if self._strict and (not line.endswith(b"\r\n") or b"\r" in line[:-2]):
            raise BareNewline()
        return line

    async def readline(self) -> bytes:
        return await self.readuntil(b"\n")


class TmailSMTP(SMTP):
    # The StreamReader's buffer limit: DATA is read in chunks of about this size (the
    # 1,000-octet line limit is enforced by smtp_receiver.data, commands by aiosmtpd).
    line_length_limit = 65_536

    def __init__(self, handler: ReceiverHandler, *, config: Config, limits: SessionLimits,
                 listener: Listener, **options: Any) -> None:
        super().__init__(handler, **options)
        self.listener = listener
        # aiosmtpd keeps this dict on the class, shared by every session, and grows it at
        # each EHLO: one per session keeps the MAIL line limit where RFC 1870 puts it.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.config = config
        self.limits = limits
        self.handler = handler
        self.state: SessionState | None = None
        self._admitted = False

    @property
    def encrypted(self) -> bool:
        """TLS is up: after STARTTLS, or from the first byte on the implicit-TLS listener
        (aiosmtpd only knows of the former)."""
        return self.listener.implicit_tls or self._tls_protocol is not None

    # --- admission -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and self.state is None:  # a new client, not STARTTLS
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            refusal = self.limits.admit(ip)
            if refusal is not None:
                log.warning("client=%s: connection refused: %s", ip, refusal.text)
                self.handler.refused(refusal.reason)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"421 4.7.0 {self.hostname} {refusal.text}\r\n".encode())
                transport.close()
                return
            self._admitted = True
            self.state = SessionState(ip)
        elif self.state is not None:  # STARTTLS: forget what the client said in clear text
            self.state.forget_transaction_and_auth()  # (RFC 3207 §4.2, as aiosmtpd does)
        super().connection_made(transport)
        if not isinstance(self._reader, CommandReader):
            self._reader = CommandReader(self._reader, self.config.smtp_timeout,
                                         self.config.smtp_bare_newline == "reject")

    def connection_lost(self, error: Exception | None) -> None:
        if self.state is None:
            return  # refused at connect: aiosmtpd never started
        if self._admitted:
            self._admitted = False
            self.limits.release(self.state.client_ip)
        super().connection_lost(error)

    # --- replies, errors and junk ---------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            if status in _REPLIES:
                if status.startswith("552"):  # MAIL FROM ... SIZE= over the limit
                    self.handler.refused("too_big")
                status = _REPLIES[status]
            status = status.encode("ascii", "backslashreplace")
        async with asyncio.timeout(self.config.smtp_timeout):
            await super().push(status)
        if self.state is not None and self.state.hang_up:
            self.close()
        elif status[:1] in b"45" and not status.startswith(b"421"):
            await self.count_error()

    async def count_error(self) -> None:
        """One more error; at ``TMAIL_SMTP_HARD_ERROR_LIMIT`` the session ends."""
        assert self.state is not None
        self.state.errors += 1
        if self.state.errors >= self.config.smtp_hard_error_limit and self.transport:
            log.warning("client=%s: too many errors", self.state.client_ip)
            await self.close_with(f"421 4.7.0 {self.hostname} Error: too many errors")

    async def close_with(self, reply: str) -> None:
        assert self.state is not None
        self.state.hang_up = True
        await self.push(reply)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _junk(self) -> bool:
        """NOOP, RSET, VRFY, HELP beyond ``TMAIL_SMTP_JUNK_COMMAND_LIMIT`` count as errors
        (smtpd_junk_command_limit): a client looping on them gets ``421`` in the end."""
        assert self.state is not None
        self.state.junk += 1
        if self.state.junk > self.config.smtp_junk_command_limit:
            await self.count_error()
        return self.state.hang_up

    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_VRFY(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

    async def handle_exception(self, error: Exception) -> str:
        """Any exception of a session becomes a temporary failure for that session alone."""
        assert self.state is not None
        ip = self.state.client_ip
        if isinstance(error, BareNewline):
            log.warning("client=%s: bare <CR> or <LF> in a command line", ip)
            self.handler.refused("bare_newline")
            self.state.hang_up = True
            return "550 5.5.2 Error: bare <CR> or <LF> received"
        if isinstance(error, TimeoutError):
            log.warning("client=%s: timeout", ip)
            self.state.hang_up = True
            return f"421 4.4.2 {self.hostname} Error: timeout exceeded"
        log.exception("client=%s: unexpected error in the SMTP session", ip)
        self.handler.refused("internal_error")
        return "451 4.3.0 Error: internal error, try again later"

    # --- the transaction ----------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_ADDRESS.fullmatch(arg.lstrip())
        if match is None:
            return super()._getaddr(arg)
        address, rest = match.groups()
        rest = rest.lstrip()
        if rest.startswith("("):  # a comment: the full parser knows what to do with it
            return super()._getaddr(arg)
        local_part = address.rpartition("@")[0]
        if self.local_part_limit and len(local_part) > self.local_part_limit:
            return None, None
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA checks, then the message streamed to a spool as it arrives
        (aiosmtpd has no hook for that: its own DATA keeps everything in memory)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = self._reader.raw if isinstance(self._reader, CommandReader) else self._reader
        deadline = Deadline(self.config.smtp_timeout, self.config.smtp_min_data_rate)
        try:
            status = await self.handler.receive_message(
                self, self.session, self.envelope, wire_chunks(reader, deadline))
        except Exception:
            # Maybe in the middle of the message: what follows must not be read as commands.
            assert self.state is not None
            self.state.hang_up = True
            raise
        finally:
            self._set_post_data_state()
        await self.push(status)


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
        servers.append(await loop.create_server(
            _factory(config, handler, context, limits, listener),
            host=listener.bind.host,
            port=listener.bind.port,
            family=socket.AF_INET6 if ":" in listener.bind.host else socket.AF_INET,
            reuse_port=True,
            backlog=1024,
            # 465: the handshake comes first, before the session (and its limits) exists
            ssl=context if listener.implicit_tls else None,
            ssl_handshake_timeout=config.smtp_timeout if listener.implicit_tls else None,
        ))
    return servers


def _factory(config: Config, handler: ReceiverHandler, context: ssl.SSLContext,
             limits: SessionLimits, listener: Listener) -> Callable[[], SMTP]:
    """The sessions of one listener. On the submission ports AUTH comes before MAIL
    (aiosmtpd's ``530 5.7.0 Authentication required``); on 587 only after STARTTLS
    (``538 5.7.11``, RFC 4954 §6, and EHLO offers AUTH only then); 465 is TLS already, so
    it offers no STARTTLS and AUTH at once."""

    def factory() -> SMTP:
        return TmailSMTP(
            handler,
            config=config,
            limits=limits,
            listener=listener,
            hostname=config.hostname,
            ident="tmail",
            data_size_limit=config.max_message_size,
            decode_data=False,
            # aiosmtpd decodes every command as UTF-8 then (surrogateescape), so that a
            # non-ASCII address gets our 553 5.6.7 and not "500 strict ASCII mode";
            # whether SMTPUTF8 is offered is TMAIL_SMTP_SMTPUTF8's (handler.handle_EHLO).
            enable_SMTPUTF8=True,
            tls_context=None if listener.implicit_tls else context,
            require_starttls=False,
            auth_required=listener.submission,
            auth_require_tls=(not listener.implicit_tls if listener.submission
                              else config.smtp_auth_require_tls),
            # Our own deadlines (one command line, one reply, the DATA phase) do the work;
            # aiosmtpd's timer, reset at each command, is only a backstop for a command
            # that hangs (a stuck disk).
            timeout=2 * config.smtp_timeout
            + config.max_message_size / config.smtp_min_data_rate,
        )

    return factory
