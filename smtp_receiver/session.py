"""One SMTP session (RFC 5321) from the greeting to the close: the commands, their order and
syntax, and the limits of a public MX (Postfix's smtpd as the model).

The session reads command lines from its :class:`~smtp_receiver.connection.Connection` and
queues each reply there; the connection writes the replies of a pipelined batch in one
segment when the session next waits for input. What the server decides about a sender, a
recipient, a login or a message is the handler's (:mod:`smtp_receiver.handler`); this
module only checks what the client said against the protocol:

* the state machine: HELO/EHLO before MAIL, MAIL before RCPT, RCPT before DATA, AUTH before
  MAIL on the submission listeners; STARTTLS starts the session again (RFC 3207 §4.2);
* limits: each command line whole within ``TMAIL_SMTP_TIMEOUT`` (``421 4.4.2``), the
  error and junk-command limits (``421 4.7.0``), a bare CR or LF in a command line
  (``550 5.5.2``), commands pipelined after DATA (``554 5.5.0``, RFC 2920 §3.1: DATA ends
  a batch; Postfix's ``smtpd_forbid_unauth_pipelining``);
* any unexpected exception answers ``451 4.3.0`` to this session alone.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from smtp_receiver.auth import MECHANISMS
from smtp_receiver.checks import split_params, split_path, valid_helo
from smtp_receiver.connection import Closed, Connection, LineTooLong
from smtp_receiver.data import Deadline, wire_chunks
from smtp_receiver.handler import ReceiverHandler
from smtp_receiver.limits import SessionLimits
from smtp_receiver.state import SessionState
from smtp_receiver.submission import Listener
from tmail.config import Config

log = logging.getLogger("smtp_receiver")

COMMAND_LIMIT = 512  # octets of a command line with its CRLF (RFC 5321 §4.5.3.1.4)
MAIL_EXTRA = 26 + 10  # what SIZE (RFC 1870) and SMTPUTF8 (RFC 6531) add to MAIL's
AUTH_LIMIT = 12_288  # an AUTH line with its initial response (RFC 4954 §4)
JUNK = frozenset({"NOOP", "RSET", "VRFY", "HELP"})  # smtpd_junk_command_limit's commands


@dataclass(frozen=True)
class Service:
    """What every session of one listener shares."""

    config: Config
    handler: ReceiverHandler
    limits: SessionLimits
    listener: Listener
    tls: ssl.SSLContext | None  # for STARTTLS; None on the implicit-TLS listener


class BareNewline(Exception):
    """A command line ended in a bare LF or held a bare CR (smtpd_forbid_bare_newline)."""


class Session:
    def __init__(self, service: Service, connection: Connection, state: SessionState) -> None:
        self.service = service
        self.config = service.config
        self.handler = service.handler
        self.connection = connection
        self.state = state
        self.hostname = service.config.hostname
        self._timeout = service.config.smtp_timeout
        self._strict = service.config.smtp_bare_newline == "reject"

    # --- the session's life --------------------------------------------------------------

    async def run(self) -> None:
        state = self.state
        try:
            self.reply(f"220 {self.hostname} ESMTP tmail")
            while not state.hang_up:
                try:
                    await self.command(await self.read_line())
                except LineTooLong:
                    self.reply("500 5.5.2 Error: command line too long")
                except BareNewline:
                    log.warning("client=%s: bare <CR> or <LF> in a command line",
                                state.client_ip)
                    self.handler.refused("bare_newline")
                    state.hang_up = True
                    self.reply("550 5.5.2 Error: bare <CR> or <LF> received")
        except (Closed, ConnectionError, asyncio.IncompleteReadError):
            return  # the client went away (in DATA: wire_chunks reads as a StreamReader)
        except TimeoutError:
            log.warning("client=%s: timeout", state.client_ip)
            self.connection.reply(
                f"421 4.4.2 {self.hostname} Error: timeout exceeded".encode())
        except Exception:  # a bug outside a command: this session ends, no other
            log.exception("client=%s: unexpected error in the SMTP session", state.client_ip)
            self.connection.abort()
            return
        self.connection.close(self._timeout)

    async def read_line(self) -> bytes:
        """The next command line (or AUTH answer), without its line end."""
        line = await self.connection.readline(self._timeout, self._timeout)
        if self._strict and (not line.endswith(b"\r\n") or b"\r" in line[:-2]):
            raise BareNewline()
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    async def command(self, line: bytes) -> None:
        verb_bytes, _, arg_bytes = line.partition(b" ")
        try:
            verb = verb_bytes.decode("ascii").upper()
        except UnicodeDecodeError:
            verb = ""
        limit = AUTH_LIMIT if verb == "AUTH" else COMMAND_LIMIT + (
            MAIL_EXTRA if verb == "MAIL" and self.state.extended else 0)
        method = COMMANDS.get(verb)
        if len(line) > limit:
            self.reply("500 5.5.2 Error: command line too long")
        elif method is None:
            self.reply("500 5.5.2 Error: command not recognized" if verb
                       else "500 5.5.2 Error: bad syntax")
        elif verb in JUNK and self._junk():
            return
        else:
            arg = arg_bytes.decode("utf-8", "surrogateescape").strip()
            try:
                await method(self, arg)
            except (TimeoutError, Closed, ConnectionError, asyncio.IncompleteReadError,
                    LineTooLong, BareNewline):
                raise
            except Exception:
                log.exception("client=%s: unexpected error in the SMTP session",
                              self.state.client_ip)
                self.handler.refused("internal_error")
                self.reply("451 4.3.0 Error: internal error, try again later")

    # --- replies, errors and junk ---------------------------------------------------------

    def reply(self, text: str) -> None:
        """Queue a reply; a 4xx or 5xx counts towards ``TMAIL_SMTP_HARD_ERROR_LIMIT``."""
        self.connection.reply(text.encode("ascii", "backslashreplace"))
        if text[0] in "45" and not text.startswith("421") and not self.state.hang_up:
            self._count_error()

    def _count_error(self) -> None:
        state = self.state
        state.errors += 1
        if state.errors >= self.config.smtp_hard_error_limit:
            log.warning("client=%s: too many errors", state.client_ip)
            state.hang_up = True
            self.reply(f"421 4.7.0 {self.hostname} Error: too many errors")

    def _junk(self) -> bool:
        """NOOP, RSET, VRFY, HELP beyond ``TMAIL_SMTP_JUNK_COMMAND_LIMIT`` count as errors
        (smtpd_junk_command_limit): a client looping on them gets ``421`` in the end.
        True: the session ends instead of answering."""
        self.state.junk += 1
        if self.state.junk > self.config.smtp_junk_command_limit:
            self._count_error()
        return self.state.hang_up

    def _refused_before(self) -> bool:
        """Replies and says so when the command needs a greeting, or a login first."""
        if not self.state.helo:
            self.reply("503 5.5.1 Error: send HELO/EHLO first")
            return True
        if self.state.submission and not self.state.auth_login:
            self.reply("530 5.7.0 Authentication required")
            return True
        return False

    async def challenge(self, prompt: bytes) -> bytes:
        """An AUTH challenge and the client's answer (for :mod:`smtp_receiver.auth`)."""
        self.connection.reply(b"334 " + prompt)
        return (await self.read_line()).strip()

    # --- greeting and TLS -------------------------------------------------------------------

    async def helo(self, arg: str) -> None:
        await self._greet(arg, extended=False)

    async def ehlo(self, arg: str) -> None:
        await self._greet(arg, extended=True)

    async def _greet(self, name: str, extended: bool) -> None:
        verb = "EHLO" if extended else "HELO"
        if not name:
            self.reply(f"501 5.5.4 Syntax: {verb} hostname")
            return
        state = self.state
        state.reset_transaction()
        state.extended = extended
        if not valid_helo(name):
            state.helo = ""
            self.reply(f"501 5.5.2 Invalid {verb} hostname")
            return
        state.helo = name
        if not extended:
            self.reply(f"250 {self.hostname}")
            return
        lines = [self.hostname, f"SIZE {self.config.max_message_size}", "8BITMIME"]
        if self.config.smtp_smtputf8:
            lines.append("SMTPUTF8")
        if self.service.tls is not None and not state.tls:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH " + " ".join(MECHANISMS))
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES", "HELP"]
        for line in lines[:-1]:
            self.connection.reply(b"250-" + line.encode())
        self.connection.reply(b"250 " + lines[-1].encode())

    def _auth_offered(self) -> bool:
        """AUTH only over TLS on 587 (RFC 4954 §4) and, with TMAIL_SMTP_AUTH_REQUIRE_TLS,
        on the MX; 465 is TLS from the first byte."""
        require_tls = self.state.submission or self.config.smtp_auth_require_tls
        return self.state.tls or not require_tls

    async def starttls(self, arg: str) -> None:
        if arg:
            self.reply("501 5.5.4 Syntax: STARTTLS")
            return
        if self.state.tls:
            self.reply("554 5.5.1 Error: TLS already active")
            return
        if self.service.tls is None:
            self.reply("454 4.7.0 TLS not available")
            return
        self.reply("220 2.0.0 Ready to start TLS")
        try:
            await self.connection.start_tls(self.service.tls, self._timeout)
        except (ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("client=%s: TLS handshake failed: %s", self.state.client_ip, exc)
            self.connection.abort()
            raise Closed() from exc
        self.state.forget_greeting_and_auth()
        self.state.tls = True

    async def auth(self, arg: str) -> None:
        state = self.state
        if not state.helo:
            self.reply("503 5.5.1 Error: send EHLO first")
        elif not state.extended:
            self.reply("502 5.5.1 Error: AUTH needs EHLO")
        elif not self._auth_offered():
            self.reply("538 5.7.11 Encryption required for requested authentication "
                       "mechanism")
        elif state.auth_login:
            self.reply("503 5.5.1 Error: already authenticated")
        elif state.mail_from is not None:
            self.reply("503 5.5.1 Error: MAIL transaction in progress")
        elif not arg or len(arg.split()) > 2:
            self.reply("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
        elif arg.split()[0].upper() not in MECHANISMS:
            self.reply("504 5.5.4 Unrecognized authentication type")
        else:
            self.reply(await self.handler.authenticator.authenticate(self, state, arg.split()))

    # --- the transaction --------------------------------------------------------------------

    async def mail(self, arg: str) -> None:
        if self._refused_before():
            return
        state = self.state
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address>"
        if arg[:5].upper() != "FROM:":
            self.reply(syntax)
            return
        address, rest = split_path(arg[5:])
        params = split_params(rest)
        if address is None:
            self.reply("501 5.1.3 Bad address syntax")
        elif not address or params is None or (params and not state.extended):
            self.reply(syntax)
        elif state.mail_from is not None:
            self.reply("503 5.5.1 Error: nested MAIL command")
        elif params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
            self.reply("501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME")
        elif (smtputf8 := params.pop("SMTPUTF8", False)) not in (True, False):
            self.reply("501 5.5.4 Error: SMTPUTF8 takes no arguments")
        elif not self._size_fits(params.pop("SIZE", None), syntax):
            return
        elif params:
            self.reply("555 5.5.4 Unsupported option")
        else:
            self.reply(await self.handler.mail(state, address, smtputf8 is True))

    def _size_fits(self, size: str | bool | None, syntax: str) -> bool:
        """``SIZE=`` (RFC 1870): refused at once when the message would be too big."""
        if size is None:
            return True
        if size is True or not isinstance(size, str) or not size.isdigit():
            self.reply(syntax)
            return False
        if int(size) > self.config.max_message_size:
            self.handler.refused("too_big")
            self.reply("552 5.3.4 Message size exceeds fixed limit")
            return False
        return True

    async def rcpt(self, arg: str) -> None:
        if self._refused_before():
            return
        state = self.state
        syntax = "501 5.5.4 Syntax: RCPT TO:<address>"
        if state.mail_from is None:
            self.reply("503 5.5.1 Error: need MAIL command")
            return
        if arg[:3].upper() != "TO:":
            self.reply(syntax)
            return
        address, rest = split_path(arg[3:])
        params = split_params(rest)
        if address is None:
            self.reply("501 5.1.3 Bad address syntax")
        elif not address or address == "<>" or params is None or (
                params and not state.extended):
            self.reply(syntax)
        elif params:
            self.reply("555 5.5.4 Unsupported option")
        else:
            self.reply(await self.handler.rcpt(state, address))

    async def data(self, arg: str) -> None:
        state = self.state
        if self.connection.pending_input():  # the message must wait for our 354
            log.warning("client=%s: improper command pipelining after DATA", state.client_ip)
            state.hang_up = True
            self.reply("554 5.5.0 Error: SMTP protocol synchronization")
            return
        if self._refused_before():
            return
        if not state.rcpt_tos:
            self.reply("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            self.reply("501 5.5.4 Syntax: DATA")
            return
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        deadline = Deadline(self._timeout, self.config.smtp_min_data_rate)
        try:
            status = await self.handler.receive_message(
                state, wire_chunks(self.connection, deadline))
        except Exception:
            # Maybe in the middle of the message: what follows must not be read as commands.
            state.hang_up = True
            raise
        finally:
            state.reset_transaction()
        self.reply(status)

    # --- the others -------------------------------------------------------------------------

    async def rset(self, arg: str) -> None:
        if arg:
            self.reply("501 5.5.4 Syntax: RSET")
            return
        self.state.reset_transaction()
        self.reply("250 2.0.0 Ok")

    async def noop(self, arg: str) -> None:
        self.reply("250 2.0.0 Ok")

    async def quit(self, arg: str) -> None:
        self.state.hang_up = True
        self.reply("221 2.0.0 Bye")

    async def vrfy(self, arg: str) -> None:
        if self.state.submission and not self.state.auth_login:
            self.reply("530 5.7.0 Authentication required")
        elif not arg:
            self.reply("501 5.5.4 Syntax: VRFY address")
        else:  # no directory harvesting through VRFY (Postfix's disable_vrfy_command)
            self.reply("252 2.0.0 Cannot VRFY user, but will accept message and attempt "
                       "delivery")

    async def help(self, arg: str) -> None:
        self.reply("214 2.0.0 Commands: " + " ".join(sorted(COMMANDS)))

    async def expn(self, arg: str) -> None:
        self.reply("502 5.5.1 Error: EXPN not implemented")


COMMANDS: dict[str, Callable[[Session, str], Awaitable[None]]] = {
    "HELO": Session.helo, "EHLO": Session.ehlo, "STARTTLS": Session.starttls,
    "AUTH": Session.auth, "MAIL": Session.mail, "RCPT": Session.rcpt, "DATA": Session.data,
    "RSET": Session.rset, "NOOP": Session.noop, "QUIT": Session.quit, "VRFY": Session.vrfy,
    "HELP": Session.help, "EXPN": Session.expn,
}
