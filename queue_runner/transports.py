"""Transports behind one small interface: a message and its recipients in, one result per
recipient out. SMTP for remote domains, Maildir for local users."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from queue_runner.results import RecipientResult, failure
from queue_runner.routing import Resolver, RoutingError, destination
from tmail import maildir
from tmail.config import Config, HostPort
from tmail.quota import parse_quota
from tmail.users import UserStore


@dataclass(frozen=True)
class Outgoing:
    """One message to some of its recipients (all in one domain for SMTP)."""

    uuid: str
    mail_from: str
    raw: bytes
    recipients: Sequence[str]


class Transport(Protocol):
    def send(self, message: Outgoing) -> list[RecipientResult]: ...


class MaildirTransport:
    """Local users (and catchalls): straight into ``<Home>/Maildir``."""

    def __init__(self, config: Config, users: UserStore) -> None:
        self._config = config
        self._users = users

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
            return failure(451, f"4.3.0 cannot write the mailbox: {exc}", "local")
        return RecipientResult(250, f"2.0.0 delivered to maildir ({delivered.path.name})",
                               "local")


class SmtpTransport:
    """Remote domains: one SMTP transaction per message and domain, STARTTLS when offered."""

    def __init__(self, config: Config, resolver: Resolver) -> None:
        self._config = config
        self._resolver = resolver
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Opportunistic TLS, as MTAs do by default: encrypt, but accept any certificate.
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def send(self, message: Outgoing) -> list[RecipientResult]:
        domain = message.recipients[0].rpartition("@")[2].lower()
        try:
            hosts = destination(domain, self._config, self._resolver).hosts
        except RoutingError as exc:
            code = 550 if exc.permanent else 451
            return [failure(code, f"{exc.status} {exc.text}")] * len(message.recipients)
        last: list[RecipientResult] = []
        for host in hosts:
            try:
                return self._session(host, message)
            except (OSError, smtplib.SMTPException) as exc:
                # Try the next MX; report the last host's trouble if all fail.
                last = [failure(451, f"4.4.1 connect to {host}: {_describe(exc)}", str(host))] * (
                    len(message.recipients))
        return last

    def _session(self, host: HostPort, message: Outgoing) -> list[RecipientResult]:
        relay = str(host)
        timeout = self._config.runner_timeout
        with smtplib.SMTP(timeout=timeout, local_hostname=self._config.hostname) as client:
            client.connect(host.host, host.port)
            client.ehlo()
            if client.has_extn("starttls") and self._config.runner_starttls != "none":
                client.starttls(context=self._tls)
                client.ehlo()
            elif self._config.runner_starttls == "encrypt":
                text = "4.7.4 TLS is required but was not offered"
                return [failure(451, text, relay)] * len(message.recipients)
            code, reply = client.mail(message.mail_from)
            if code >= 400:
                return [failure(code, reply.decode(errors="replace"), relay)] * len(
                    message.recipients)
            results: dict[str, RecipientResult] = {}
            accepted = []
            for rcpt in message.recipients:
                code, reply = client.rcpt(rcpt)
                if code >= 400:
                    results[rcpt] = failure(code, reply.decode(errors="replace"), relay)
                else:
                    accepted.append(rcpt)
            if accepted:
                try:
                    code, reply = client.data(message.raw)
                except smtplib.SMTPDataError as exc:  # smtplib raises on any non-250 reply
                    code, reply = exc.smtp_code, exc.smtp_error
                for rcpt in accepted:
                    results[rcpt] = RecipientResult(code, reply.decode(errors="replace"), relay)
            else:
                client.rset()
            return [results[rcpt] for rcpt in message.recipients]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "lost connection"
    return str(exc) or type(exc).__name__
