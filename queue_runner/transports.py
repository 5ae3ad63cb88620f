"""Transports behind one small interface: a message and its recipients in, one result per
recipient out. SMTP for remote domains, Maildir for local users."""

from __future__ import annotations

import errno
import smtplib
import socket
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from queue_runner.results import RecipientResult, failure
from queue_runner.routing import Resolver, RoutingError, destination
from tmail import maildir
from tmail.address import AddressError, domain_of, parse_domain
from tmail.config import Config, HostPort
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
        user = self._users.find_mailbox(rcpt)
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


class _Cached:
    """An SMTP connection left open after a transaction, for the next message to its host."""

    def __init__(self, client: smtplib.SMTP, relay: str) -> None:
        self.client = client
        self.relay = relay
        self.opened = time.monotonic()
        self.idle_since = self.opened
        self.uses = 0


class ConnectionCache:
    """Open SMTP sessions by destination host, as Postfix's scache keeps them.

    Opening a session (TCP, greeting, EHLO, STARTTLS) costs more than the transaction itself
    for small messages. A session goes back here after each message and is taken again by
    the next message to the same host, within the same limits as Postfix: idle at most
    ``idle_limit`` seconds, open at most ``age_limit`` seconds, at most ``use_limit``
    transactions.
    """

    def __init__(self, idle_limit: float = 2.0, age_limit: float = 300.0,
                 use_limit: int = 100) -> None:
        self.idle_limit, self.age_limit, self.use_limit = idle_limit, age_limit, use_limit
        self._idle: dict[HostPort, list[_Cached]] = defaultdict(list)
        self._lock = threading.Lock()

    def take(self, host: HostPort) -> _Cached | None:
        expired: list[_Cached] = []
        found = None
        with self._lock:
            sessions = self._idle.get(host, [])
            while sessions and found is None:
                cached = sessions.pop()
                if self._usable(cached, time.monotonic()):
                    found = cached
                else:
                    expired.append(cached)
        for cached in expired:
            _quit(cached.client)
        return found

    def give_back(self, host: HostPort, cached: _Cached) -> None:
        cached.uses += 1
        cached.idle_since = time.monotonic()
        if not self._usable(cached, cached.idle_since):
            _quit(cached.client)
            return
        with self._lock:
            self._idle[host].append(cached)

    def close_idle(self, everything: bool = False) -> None:
        """QUIT the sessions past their limits (all of them with ``everything``)."""
        moment = time.monotonic()
        closing: list[_Cached] = []
        with self._lock:
            for sessions in self._idle.values():
                keep = [c for c in sessions if not everything and self._usable(c, moment)]
                closing.extend(c for c in sessions if c not in keep)
                sessions[:] = keep
        for cached in closing:
            _quit(cached.client)

    def _usable(self, cached: _Cached, moment: float) -> bool:
        return (moment - cached.idle_since <= self.idle_limit
                and moment - cached.opened <= self.age_limit
                and cached.uses < self.use_limit)


class SmtpTransport:
    """Remote domains: one SMTP transaction per message and domain, STARTTLS when offered,
    over sessions that are kept open for the next message to the same host."""

    def __init__(self, config: Config, resolver: Resolver,
                 cache: ConnectionCache | None = None) -> None:
        self._config = config
        self._resolver = resolver
        self.cache = cache or ConnectionCache()
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Opportunistic TLS, as MTAs do by default: encrypt, but accept any certificate.
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def send(self, message: Outgoing) -> list[RecipientResult]:
        domain = domain_of(message.recipients[0])
        try:
            hosts = destination(domain, self._config, self._resolver).hosts
        except RoutingError as exc:
            code = 550 if exc.permanent else 451
            return [failure(code, f"{exc.status} {exc.text}")] * len(message.recipients)
        last: list[RecipientResult] = []
        for host in hosts:
            cached = self.cache.take(host)
            if cached is not None:
                try:
                    return _closing_on_error(cached, self._transaction, host, message)
                except (OSError, smtplib.SMTPException):
                    # The server closed the idle session (or broke it before MAIL was
                    # answered): nothing was sent, so a fresh session may try again.
                    _quit(cached.client)
            try:
                return _closing_on_error(self._open(host), self._transaction, host, message)
            except _TlsRequired as exc:
                return [failure(451, str(exc), str(host))] * len(message.recipients)
            except (OSError, smtplib.SMTPException) as exc:
                # Try the next MX; report the last host's trouble if all fail.
                last = [failure(451, f"4.4.1 connect to {host}: {_describe(exc)}", str(host))] * (
                    len(message.recipients))
        return last

    def close_idle(self) -> None:
        self.cache.close_idle()

    def close(self) -> None:
        self.cache.close_idle(everything=True)

    def _open(self, host: HostPort) -> _Cached:
        client = smtplib.SMTP(timeout=self._config.runner_timeout,
                              local_hostname=self._config.hostname)
        try:
            client.connect(host.host, host.port)
            client.ehlo()
            if client.has_extn("starttls") and self._config.runner_starttls != "none":
                client.starttls(context=self._tls)
                client.ehlo()
            elif self._config.runner_starttls == "encrypt":
                raise _TlsRequired("4.7.4 TLS is required but was not offered")
        except BaseException:
            client.close()
            raise
        return _Cached(client, str(host))

    def _transaction(self, host: HostPort, session: _Cached,
                     message: Outgoing) -> list[RecipientResult]:
        """MAIL, RCPT..., DATA on an open session; the session goes back to the cache when
        the transaction ended cleanly, else it is closed."""
        client, relay = session.client, session.relay
        utf8 = client.has_extn("smtputf8") and any(
            _ascii_form(address) is None for address in (message.mail_from, *message.recipients))
        sender = message.mail_from if utf8 else _ascii_form(message.mail_from)
        if sender is None:
            self.cache.give_back(host, session)  # no command was sent: the session is clean
            return [_no_smtputf8(message.mail_from, relay)] * len(message.recipients)
        code, reply = client.mail(sender, _mail_options(client, message, utf8))
        if code >= 400:
            _quit(client)
            return [failure(code, reply.decode(errors="replace"), relay)] * len(
                message.recipients)
        results: dict[str, RecipientResult] = {}
        accepted = []
        for rcpt in message.recipients:
            address = rcpt if utf8 else _ascii_form(rcpt)
            if address is None:
                results[rcpt] = _no_smtputf8(rcpt, relay)
                continue
            code, reply = client.rcpt(address)
            if code >= 400:
                results[rcpt] = failure(code, reply.decode(errors="replace"), relay)
            else:
                accepted.append(rcpt)
        try:
            if accepted:
                try:
                    code, reply = client.data(message.raw)
                except smtplib.SMTPDataError as exc:  # smtplib raises on any non-250 reply
                    code, reply = exc.smtp_code, exc.smtp_error
                for rcpt in accepted:
                    results[rcpt] = RecipientResult(code, reply.decode(errors="replace"), relay)
            else:
                client.rset()
        except (OSError, smtplib.SMTPException) as exc:
            # Lost during DATA: the message may or may not have arrived; retry later.
            _quit(client)
            text = f"4.4.2 lost connection with {relay} while sending the message"
            return [results.get(r) or failure(451, f"{text} ({_describe(exc)})", relay)
                    for r in message.recipients]
        if code == 421:
            _quit(client)
        else:
            self.cache.give_back(host, session)
        return [results[rcpt] for rcpt in message.recipients]


def _closing_on_error(session: _Cached, transaction: _Transaction, host: HostPort,
                      message: Outgoing) -> list[RecipientResult]:
    """Run ``transaction``; on an exception that is not the network's (a bug, a codec
    error), close the session's socket before the exception goes on to the runner."""
    try:
        return transaction(host, session, message)
    except (OSError, smtplib.SMTPException):
        raise
    except Exception:
        session.client.close()
        raise


class _Transaction(Protocol):
    def __call__(self, host: HostPort, session: _Cached,
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


def _mail_options(client: smtplib.SMTP, message: Outgoing, utf8: bool) -> list[str]:
    """SMTPUTF8 (RFC 6531) when an address needs it, BODY=8BITMIME for an 8-bit message."""
    options = ["SMTPUTF8"] if utf8 else []
    if client.has_extn("8bitmime") and not message.raw.isascii():
        options.append("BODY=8BITMIME")
    return options


def _no_smtputf8(address: str, relay: str) -> RecipientResult:
    return failure(550, f"5.6.7 non-ASCII address <{address}> cannot be sent: {relay} "
                        "does not support SMTPUTF8", relay)


class _TlsRequired(Exception):
    """STARTTLS was required (TMAIL_RUNNER_STARTTLS=encrypt) and the server did not offer it."""


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "lost connection"
    return str(exc) or type(exc).__name__
