"""What the receiver decides about a session (:mod:`smtp_receiver.session` speaks the
protocol): the sender at MAIL, recipients at RCPT, and ``250`` at the end of DATA only once
the message is durable in the queue.

Every SQLite call (AUTH, the recipient policy) runs in a worker thread, never on the event
loop that serves every session of the process.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator

from smtp_receiver.auth import Authenticator
from smtp_receiver.checks import parse_address
from smtp_receiver.committer import GroupCommitter
from smtp_receiver.data import Framer, HeaderBlock, MessageWriter, receive
from smtp_receiver.limits import AuthFailures
from smtp_receiver.policy import RecipientPolicy, Refusal
from smtp_receiver.state import SessionState
from smtp_receiver.submission import NOT_OWNED, SenderRules
from smtp_receiver.trace import protocol, received_header
from tmail.config import Config
from tmail.db import open_database
from tmail.directory.lookup import Directory
from tmail.message import format_date, new_message_id
from tmail.metrics import SMTP_MESSAGES, Counters
from tmail.queue import Envelope as QueueEnvelope
from tmail.queue import QueueStore, Target
from tmail.text import printable
from tmail.users import UserStore

log = logging.getLogger("smtp_receiver")

# A refused message, by ContentError reason: the reply (given after the final dot).
_CONTENT_REPLIES = {
    "too_big": "552 5.3.4 Message size exceeds fixed limit",
    "bare_newline": "550 5.5.2 Error: bare <CR> or <LF> received",
    "line_too_long": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    "too_many_hops": "554 5.4.6 Too many hops",
}
_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT}


def _targets(state: SessionState) -> list[Target]:
    """One target per final recipient of the message (Postfix's cleanup drops duplicates
    too): two RCPTs expanding to the same address give one record, the first one's."""
    found: dict[tuple[str, str], Target] = {}
    for rcpt in state.rcpt_tos:
        for target in state.targets[rcpt]:
            found.setdefault((target.rcpt_to.lower(), target.pipe), target)
    return list(found.values())


class ReceiverHandler:
    def __init__(
        self,
        config: Config,
        users: UserStore,
        store: QueueStore,
        committer: GroupCommitter,
        *,
        login_failure_delay: float = 1.0,
        counters: Counters | None = None,
    ) -> None:
        self.config = config
        self.counters = counters or Counters(config.metrics_db)
        self.store = store
        database = open_database(config)
        database.start()  # migrated once per process, at start-up or at first use
        directory = Directory(database, config)
        self.policy = RecipientPolicy(config, directory)
        self.senders = SenderRules(config, directory)  # the submission listeners' rules
        if not config.postmaster:
            log.warning("TMAIL_POSTMASTER is not set: postmaster@ a local domain without an "
                        "alias or user of that name is refused (RFC 5321 4.5.1 wants it)")
        self.committer = committer
        self.authenticator = Authenticator(
            users, AuthFailures(config.smtp_auth_failure_limit, config.smtp_auth_failure_window),
            failure_delay=login_failure_delay)

    # --- the transaction ---------------------------------------------------------------

    async def mail(self, state: SessionState, address: str, smtputf8: bool) -> str:
        """MAIL FROM:<address> (its syntax and parameters checked by the session)."""
        if smtputf8 and not self.config.smtp_smtputf8:
            return "555 5.5.4 SMTPUTF8 is not supported"
        parsed = None
        if address != "<>":
            parsed = parse_address(address, smtputf8=smtputf8, sender=True)
            if isinstance(parsed, str):
                self.refused("bad_address")
                return parsed
        if state.submission:
            loop = asyncio.get_running_loop()
            refusal = await loop.run_in_executor(None, self.senders.check_envelope,
                                                 state.auth_login, parsed)
            if refusal is not None:
                self._log(state, f"reject: MAIL <{address}>: {refusal}")
                self.refused("sender_not_owned" if refusal == NOT_OWNED else "lookup_failure")
                return refusal
        state.reset_transaction()
        state.mail_from, state.smtputf8 = address, smtputf8
        return "250 2.1.0 Ok"

    async def rcpt(self, state: SessionState, address: str) -> str:
        """RCPT TO:<address> (its syntax checked by the session, MAIL given)."""
        if state.rejected_rcpts >= self.config.smtp_rejected_rcpt_limit:
            log.warning("client=%s: too many rejected recipients", state.client_ip)
            state.hang_up = True
            return f"421 4.7.0 {self.config.hostname} Error: too many rejected recipients"
        # On the submission ports every logged-in user relays; on the MX, those with AuthRelay.
        relay = state.auth_relay or (state.submission and bool(state.auth_login))
        reply = await self._check_rcpt(state, address, relay)
        if not isinstance(reply, str):
            state.rcpt_tos.append(address)
            state.targets.setdefault(address, reply)
            return "250 2.1.5 Ok"
        if reply.startswith("5"):
            state.rejected_rcpts += 1
        return reply

    async def _check_rcpt(self, state: SessionState, address: str,
                          relay: bool) -> list[Target] | str:
        """The targets ``address`` expands to (:mod:`tmail.directory.expansion`: aliases are
        expanded here, once, and queued as they are), else the reply that refuses it."""
        parsed = parse_address(address, smtputf8=state.smtputf8, sender=False)
        if isinstance(parsed, str):
            self.refused("bad_address")
            return parsed
        if len(state.rcpt_tos) >= self.config.max_recipients:
            self.refused("too_many_recipients")
            return "452 4.5.3 Error: too many recipients"
        loop = asyncio.get_running_loop()
        refusal = await loop.run_in_executor(None, self.policy.check, parsed, address,
                                             state.client_ip, relay)
        if not isinstance(refusal, Refusal):
            return refusal
        self._log(state, f"reject: RCPT <{address}>: {refusal}")
        self.refused(refusal.reason)
        return str(refusal)

    async def receive_message(self, state: SessionState, chunks: AsyncIterator[bytes]) -> str:
        """The DATA phase (after the session's ``354``): stream the message into a spool
        under our headers, then queue it; returns the final reply."""

        def our_headers(head: HeaderBlock) -> bytes:
            return self._headers(state, head)

        writer = MessageWriter(self.config.max_message_size, self.config.max_hops,
                               self.store.spool, our_headers)
        received = await receive(chunks, Framer(self.config.smtp_bare_newline == "normalize"),
                                 writer)
        if received.spool is None:
            return self._refuse_content(state, received.refusal, received.error)
        mail_from = "" if state.mail_from == "<>" else state.mail_from or ""
        size = received.spool.size
        try:
            if state.submission:
                refusal = await self._check_from(state, writer.head)
                if refusal is not None:
                    return refusal  # not queued: the spool goes below
            records = await self.committer.submit(QueueEnvelope(
                received.spool, mail_from, _targets(state), state.auth_login,
                state.client_ip))
        except OSError as exc:  # QueueWriteError; anything else goes to handle_exception
            return self._refuse_content(state, "queue_error", exc)
        finally:
            received.spool.discard()  # a no-op once the store took it (cancelled: not yet)
        state.message_accepted()
        self.counters.inc(SMTP_MESSAGES, result="accepted", reason="")
        uuid = records[0].uuid
        self._log(state, f"queued as {uuid}, size={size}")
        return f"250 2.0.0 Ok: queued as {uuid}"

    async def _check_from(self, state: SessionState, head: HeaderBlock) -> str | None:
        """The submission ports' end-of-DATA rule: the user owns every ``From:`` address."""
        loop = asyncio.get_running_loop()
        refusal = await loop.run_in_executor(None, self.senders.check_from, state.auth_login,
                                             head.values("From"))
        if refusal is not None:
            self._log(state, f"reject: DATA: From: {refusal}")
            self.refused("sender_not_owned" if refusal == NOT_OWNED else "lookup_failure")
        return refusal

    def _refuse_content(self, state: SessionState, reason: str, error: OSError | None) -> str:
        if error is not None:
            log.error("client=%s: queue write failed: %s", state.client_ip, error)
            reply = ("452 4.3.1 Insufficient system storage" if error.errno in _STORAGE_FULL
                     else "451 4.3.0 Error: queue file write error")
        else:
            reply = _CONTENT_REPLIES[reason]
        if reason == "bare_newline":  # the client's framing is in doubt: as Postfix, hang up
            state.hang_up = True
        self._log(state, f"reject: DATA: {reply}")
        self.refused(reason)
        return reply

    def refused(self, reason: str) -> None:
        """Count a refused command (a recipient, a sender or a message) by reason class."""
        self.counters.inc(SMTP_MESSAGES, result="refused", reason=reason)

    def _headers(self, state: SessionState, head: HeaderBlock) -> bytes:
        """Our trace header, plus Message-ID/Date for authenticated submissions that lack
        them (as a submission server does), as CRLF lines to go first."""
        lines = []
        trace = received_header(
            helo=state.helo,
            client_ip=state.client_ip,
            hostname=self.config.hostname,
            with_protocol=protocol(state.extended, state.tls, bool(state.auth_login)),
            rcpt=state.rcpt_tos[0] if len(state.rcpt_tos) == 1 else None,
        )
        lines.append(f"Received: {trace}")
        if state.auth_login:
            if not head.has("Message-ID"):
                lines.append(f"Message-ID: {new_message_id(self.config.hostname)}")
            if not head.has("Date"):
                lines.append(f"Date: {format_date()}")
        return "".join(line + "\r\n" for line in lines).encode("utf-8")

    def _log(self, state: SessionState, outcome: str) -> None:
        log.info(
            "client=%s auth=%s from=<%s> to=%s: %s",
            state.client_ip,
            printable(state.auth_login) or "-",
            printable("" if state.mail_from == "<>" else state.mail_from or ""),
            printable(",".join(f"<{r}>" for r in state.rcpt_tos)) or "-",
            printable(outcome),
        )
