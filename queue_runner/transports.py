"""Transports behind one small interface: a message and its recipients in, one result per
recipient out. SMTP for remote domains, Maildir for local users (pipes: ``pipe.py``)."""

from __future__ import annotations

import errno
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from queue_runner.passes import NO_PASS, PerPass
from queue_runner.results import RecipientResult, failure
from queue_runner.routing import (
    Hop,
    Resolver,
    RouteSource,
    RoutingError,
    destination,
)
from queue_runner.sessions import (
    Cached,
    ConnectionCache,
    HopFailed,
    SessionOpener,
    describe,
    quit_session,
)
from tmail import maildir
from tmail.address import AddressError, domain_of, parse_domain
from tmail.config import Config
from tmail.db import DatabaseUnavailable
from tmail.directory.routes import bootstrap
from tmail.quota import parse_quota
from tmail.users import UserStore


@dataclass(frozen=True)
class Outgoing:
    """One message to some of its recipients (all in one domain for SMTP; all to one
    command for a pipe), with what route selection and a pipe need to know of it."""

    uuid: str
    mail_from: str
    raw: bytes
    recipients: Sequence[str]
    auth_user: str = ""  # who submitted it (routes may apply to one authenticated user)
    orig_rcpts: Sequence[str] = ()  # per recipient: the address the client gave, or ""
    pipe: str = ""  # the command of pipe records
    pass_number: int = NO_PASS  # the delivery pass it belongs to (routes read once per pass)


class Transport(Protocol):
    def send(self, message: Outgoing) -> list[RecipientResult]: ...

    def close_idle(self) -> None:
        """Let go of resources kept between messages once they are past their limits."""

    def close(self) -> None:
        """Let go of every resource kept between messages (the runner is stopping)."""


class MaildirTransport:
    """Local users (and catchalls): straight into ``<Home>/Maildir``."""

    def __init__(self, config: Config, users: UserStore) -> None:
        self._config = config
        self._users = users

    def close_idle(self) -> None:
        """Nothing is kept between messages."""

    def close(self) -> None:
        """Nothing is kept between messages."""

    def send(self, message: Outgoing) -> list[RecipientResult]:
        return [self._deliver(message, rcpt) for rcpt in message.recipients]

    def _deliver(self, message: Outgoing, rcpt: str) -> RecipientResult:
        try:
            user = self._users.find_mailbox(rcpt)
        except DatabaseUnavailable as exc:  # per recipient: the ones delivered stay delivered
            return failure(451, f"4.3.0 {exc}", "local")
        if user is None:
            return failure(550, "5.1.1 user unknown: no such local mailbox", "local")
        copy = maildir.local_copy(message.raw, message.mail_from, rcpt)
        try:
            quota = parse_quota(user.mailbox_quota)
        except ValueError:
            quota = None
        try:
            delivered = maildir.deliver(user.maildir, copy, quota)
        except maildir.QuotaExceeded as exc:
            if self._config.over_quota_permanent:
                return failure(552, f"5.2.2 {exc}", "local")
            return failure(452, f"4.2.2 {exc}", "local")
        except OSError as exc:
            return _mailbox_write_failure(exc)
        return RecipientResult(250, f"2.0.0 delivered to maildir ({delivered.path.name})",
                               "local")


def _mailbox_write_failure(exc: OSError) -> RecipientResult:
    """A Maildir that cannot be written is a temporary failure: the message stays queued.
    A full file system is 4.3.1 (RFC 3463 "mail system full"), a disk quota 4.2.2."""
    if exc.errno == errno.ENOSPC:
        return failure(452, f"4.3.1 mailbox file system full: {exc.strerror}", "local")
    if exc.errno == errno.EDQUOT:
        return failure(452, f"4.2.2 mailbox over its disk quota: {exc.strerror}", "local")
    return failure(451, f"4.3.0 cannot write the mailbox: {exc}", "local")


class SmtpTransport:
    """Remote domains: one SMTP transaction per message and domain, over sessions that are
    kept open for the next message to the same hop. The hops come from the routes in force
    (``routes``, called once per delivery pass, ``passes.py``; ``TMAIL_ROUTES`` alone by
    default), else from MX records."""

    def __init__(self, config: Config, resolver: Resolver,
                 cache: ConnectionCache | None = None,
                 routes: RouteSource | None = None) -> None:
        self._config = config
        self._resolver = resolver
        self._routes = PerPass(routes or (lambda: bootstrap(config)))
        self.cache = cache or ConnectionCache()
        self._opener = SessionOpener(config)

    def send(self, message: Outgoing) -> list[RecipientResult]:
        count = len(message.recipients)
        try:
            routes = self._routes.get(message.pass_number)
        except DatabaseUnavailable as exc:  # no route is known: MX might be the wrong way
            return [failure(451, f"4.3.0 routes unavailable: {exc}")] * count
        try:
            hops = destination(domain_of(message.recipients[0]), routes,
                               self._resolver, sender=message.mail_from,
                               auth_user=message.auth_user).hops
        except RoutingError as exc:
            code = 550 if exc.permanent else 451
            return [failure(code, f"{exc.status} {exc.text}")] * count
        last: list[RecipientResult] = []
        for hop in hops:
            cached = self.cache.take(hop)
            if cached is not None:
                try:
                    return _closing_on_error(cached, self._transaction, hop, message)
                except (OSError, smtplib.SMTPException):
                    # The server closed the idle session (or broke it before MAIL was
                    # answered): nothing was sent, so a fresh session may try again.
                    quit_session(cached.client)
            try:
                return _closing_on_error(self._opener.open(hop), self._transaction, hop,
                                         message)
            except HopFailed as exc:  # a 4xx/5xx greeting, TLS or AUTH, 421: the next hop
                last = [exc.result] * count
            except (OSError, smtplib.SMTPException) as exc:
                last = [failure(451, f"4.4.1 connect to {hop}: {describe(exc)}", str(hop))
                        ] * count
        return last

    def close_idle(self) -> None:
        self.cache.close_idle()

    def close(self) -> None:
        self.cache.close_idle(everything=True)

    def _transaction(self, hop: Hop, session: Cached,
                     message: Outgoing) -> list[RecipientResult]:
        """MAIL, RCPT..., DATA on an open session; the session goes back to the cache when
        the transaction ended cleanly, else it is closed."""
        client, relay = session.client, session.relay
        utf8 = client.has_extn("smtputf8") and any(
            _ascii_form(address) is None for address in (message.mail_from, *message.recipients))
        sender = message.mail_from if utf8 else _ascii_form(message.mail_from)
        if sender is None:
            self.cache.give_back(hop, session)  # no command was sent: the session is clean
            return [_no_smtputf8(message.mail_from, relay)] * len(message.recipients)
        code, reply = _mail(client, sender, message, utf8)
        if code == 421:  # the server is closing this session: no verdict on the message
            quit_session(client)
            raise HopFailed(failure(451, f"4.4.2 host {relay} said: 421 {_text(reply)}",
                                    relay))
        if code >= 400:
            quit_session(client)
            return [failure(code, _text(reply), relay)] * len(
                message.recipients)
        results: dict[str, RecipientResult] = {}
        accepted = []
        for rcpt in message.recipients:
            address = rcpt if utf8 else _ascii_form(rcpt)
            if address is None:
                results[rcpt] = _no_smtputf8(rcpt, relay)
                continue
            code, reply = _command(client, "RCPT", f"TO:<{address}>")
            if code >= 400:
                results[rcpt] = failure(code, _text(reply), relay)
            else:
                accepted.append(rcpt)
        try:
            if accepted:
                try:
                    code, reply = client.data(message.raw)
                except smtplib.SMTPDataError as exc:  # smtplib raises on any non-250 reply
                    code, reply = exc.smtp_code, exc.smtp_error
                for rcpt in accepted:
                    results[rcpt] = RecipientResult(code, _text(reply), relay)
            else:
                client.rset()
        except (OSError, smtplib.SMTPException) as exc:
            # Lost during DATA: the message may or may not have arrived; retry later.
            quit_session(client)
            text = f"4.4.2 lost connection with {relay} while sending the message"
            return [results.get(r) or failure(451, f"{text} ({describe(exc)})", relay)
                    for r in message.recipients]
        if code == 421:
            quit_session(client)
        else:
            self.cache.give_back(hop, session)
        return [results[rcpt] for rcpt in message.recipients]


def _closing_on_error(session: Cached, transaction: _Transaction, hop: Hop,
                      message: Outgoing) -> list[RecipientResult]:
    """Run ``transaction``; on an exception that is not the network's (a bug, a codec
    error), close the session's socket before the exception goes on to the runner."""
    try:
        return transaction(hop, session, message)
    except (OSError, smtplib.SMTPException):
        raise
    except Exception:
        session.client.close()
        raise


class _Transaction(Protocol):
    def __call__(self, hop: Hop, session: Cached,
                 message: Outgoing) -> list[RecipientResult]: ...


def _ascii_form(address: str) -> str | None:
    """``address`` as plain SMTP can carry it: a non-ASCII domain as its A-label, ``None``
    when the local part is not ASCII (that needs SMTPUTF8)."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{parse_domain(domain)[1]}"
    except AddressError:
        return None


def _command(client: smtplib.SMTP, verb: str, path: str,
             options: Sequence[str] = ()) -> tuple[int, bytes]:
    """MAIL or RCPT with the address exactly as queued, in angle brackets (RFC 5321
    §4.1.2), through smtplib's public ``docmd`` (which still refuses a CR or LF in it).
    smtplib's ``mail()`` and ``rcpt()`` first parse every address again as a header
    (``email.utils.parseaddr``): 5 % of the runner's CPU per record, for addresses the
    receiver has validated already."""
    return client.docmd(verb, " ".join([path, *options]))


def _mail(client: smtplib.SMTP, sender: str, message: Outgoing,
          utf8: bool) -> tuple[int, bytes]:
    if utf8:
        client.command_encoding = "utf-8"  # what smtplib's own mail() does for SMTPUTF8
    return _command(client, "MAIL", f"FROM:<{sender}>", _mail_options(client, message, utf8))


def _mail_options(client: smtplib.SMTP, message: Outgoing, utf8: bool) -> list[str]:
    """SMTPUTF8 (RFC 6531) when an address needs it, BODY=8BITMIME for an 8-bit message."""
    options = ["SMTPUTF8"] if utf8 else []
    if client.has_extn("8bitmime") and not message.raw.isascii():
        options.append("BODY=8BITMIME")
    return options


def _no_smtputf8(address: str, relay: str) -> RecipientResult:
    return failure(550, f"5.6.7 non-ASCII address <{address}> cannot be sent: {relay} "
                        "does not support SMTPUTF8", relay)


def _text(reply: bytes) -> str:
    return reply.decode(errors="replace")
