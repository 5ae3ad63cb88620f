"""The aiosmtpd handler: recipients are checked at RCPT, mail is queued at DATA, and ``250``
is sent only once the message is durable in the queue (``451`` when it cannot be)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtp_receiver.committer import GroupCommitter
from smtp_receiver.policy import RecipientPolicy
from smtp_receiver.trace import protocol, received_header
from tmail.config import Config
from tmail.message import format_date, has_header, new_message_id, prepend_header
from tmail.metrics import SMTP_MESSAGES, Counters
from tmail.queue import Envelope as QueueEnvelope
from tmail.users import UserStore

log = logging.getLogger("smtp_receiver")


def _valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain and "." in domain.strip(".") and " " not in address)


def _client_ip(session: Session) -> str:
    return str(session.peer[0]) if isinstance(session.peer, tuple) else str(session.peer)


class ReceiverHandler:
    def __init__(
        self,
        config: Config,
        users: UserStore,
        committer: GroupCommitter,
        *,
        login_failure_delay: float = 1.0,
        max_auth_failures: int = 3,
        counters: Counters | None = None,
    ) -> None:
        self.config = config
        self.counters = counters or Counters(config.metrics_db)
        self.users = users
        self.policy = RecipientPolicy(config, users)
        self.committer = committer
        # (no attribute may start with "auth_": aiosmtpd takes those for AUTH mechanisms)
        self.login_failure_delay = login_failure_delay
        self.max_auth_failures = max_auth_failures

    # --- greeting and authentication -----------------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope,
                          args: list[str]) -> str | None:
        """PLAIN and LOGIN, with bcrypt off the event loop and a delay after each failure."""
        credentials = await self._read_credentials(server, args)
        if credentials is None:
            return "501 5.5.2 Cannot decode response"
        login, password = credentials
        loop = asyncio.get_running_loop()
        user = await loop.run_in_executor(None, self.users.authenticate, login, password)
        if user is not None:
            session.authenticated = True
            session.auth_data = session.login_data = user.login
            return "235 2.7.0 Authentication successful"
        failures = getattr(session, "tmail_auth_failures", 0) + 1
        session.tmail_auth_failures = failures  # type: ignore[attr-defined]
        log.warning("client=%s: AUTH failed for %r (%d)", _client_ip(session), login, failures)
        await asyncio.sleep(self.login_failure_delay)
        if failures >= self.max_auth_failures:
            await server.push("421 4.7.0 Too many authentication failures, closing")
            if server.transport is not None:
                server.transport.close()
            return None
        return "535 5.7.8 Authentication credentials invalid"

    async def _read_credentials(self, server: SMTP, args: list[str]) -> tuple[str, str] | None:
        mechanism = args[0].upper()
        try:
            if mechanism == "PLAIN":
                if len(args) > 1:
                    raw = base64.b64decode(args[1], validate=True)
                else:
                    raw = await server.challenge_auth("", encode_to_b64=False)
                if not isinstance(raw, bytes):
                    return None
                _, login, password = raw.split(b"\0", 2)
            else:
                login = args[1].encode() if len(args) > 1 else await server.challenge_auth(
                    "Username:")
                if not isinstance(login, bytes):
                    return None
                if len(args) > 1:
                    login = base64.b64decode(login, validate=True)
                password = await server.challenge_auth("Password:")
                if not isinstance(password, bytes):
                    return None
            return login.decode(), password.decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None

    # --- the transaction ---------------------------------------------------------------

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        address = "" if address == "<>" else address
        if address and not _valid_address(address):
            self.refused("bad_address")
            return "501 5.1.7 Bad sender address syntax"
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not _valid_address(address):
            self.refused("bad_address")
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            self.refused("too_many_recipients")
            return "452 4.5.3 Error: too many recipients"
        user = self.users.get(session.login_data) if session.authenticated else None
        refusal = self.policy.check(address, _client_ip(session),
                                    relay_user=bool(user and user.auth_relay))
        if refusal is not None:
            self._log(session, envelope, f"reject: RCPT <{address}>: {refusal}")
            self.refused(refusal.reason)
            return str(refusal)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = self._with_headers(server, session, envelope)
        auth_user = session.login_data if session.authenticated else ""
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
        try:
            records = await self.committer.submit(
                QueueEnvelope(raw, mail_from, list(envelope.rcpt_tos), auth_user or "",
                              _client_ip(session))
            )
        except OSError as exc:
            log.error("client=%s: queue write failed: %s", _client_ip(session), exc)
            self._log(session, envelope, "reject: DATA: 451 4.3.0 queue file write error")
            self.refused("queue_error")
            return "451 4.3.0 Error: queue file write error"
        self.counters.inc(SMTP_MESSAGES, result="accepted", reason="")
        uuid = records[0].uuid
        self._log(session, envelope, f"queued as {uuid}, size={len(raw)}")
        return f"250 2.0.0 Ok: queued as {uuid}"

    def refused(self, reason: str) -> None:
        """Count a refused command (a recipient, a sender or a message) by reason class."""
        self.counters.inc(SMTP_MESSAGES, result="refused", reason=reason)

    def _with_headers(self, server: SMTP, session: Session, envelope: Envelope) -> bytes:
        """The bytes as received, under our trace header (plus Message-ID/Date for
        authenticated submissions that lack them, as a submission server does)."""
        raw: bytes = envelope.original_content or b""
        if session.authenticated:
            if not has_header(raw, "Date"):
                raw = prepend_header(raw, "Date", format_date())
            if not has_header(raw, "Message-ID"):
                raw = prepend_header(raw, "Message-ID", new_message_id(self.config.hostname))
        trace = received_header(
            helo=session.host_name or "",
            client_ip=_client_ip(session),
            hostname=self.config.hostname,
            with_protocol=protocol(bool(session.extended_smtp), server._tls_protocol is not None,
                                   bool(session.authenticated)),
            rcpt=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
        )
        return prepend_header(raw, "Received", trace)

    def _log(self, session: Session, envelope: Envelope, outcome: str) -> None:
        log.info(
            "client=%s auth=%s from=<%s> to=%s: %s",
            _client_ip(session),
            session.login_data if session.authenticated else "-",
            "" if envelope.mail_from == "<>" else envelope.mail_from or "",
            ",".join(f"<{r}>" for r in envelope.rcpt_tos) or "-",
            outcome,
        )
