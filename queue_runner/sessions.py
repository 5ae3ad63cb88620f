"""Outgoing SMTP sessions: opening one to a hop (greeting, EHLO, STARTTLS, AUTH) and keeping
it open for the next message to the same hop.

Everything that can go wrong before the first MAIL is about the hop, not the message: a
refused connection, a greeting that is not 220, TLS required and not offered, credentials
refused. It raises :class:`HopFailed` (or a network error), and the transport tries the
next hop of the destination (a fail-over route, the next MX), keeping the last hop's
trouble as the deferral reason if none is left. An AUTH refusal is deferred, never bounced:
wrong credentials are our configuration, not the sender's fault (Postfix's
``smtp_sasl_auth_soft_bounce``).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections import defaultdict

from queue_runner.results import RecipientResult, failure
from queue_runner.routing import Hop
from tmail.config import Config
from tmail.routes import Route


class HopFailed(smtplib.SMTPException):
    """This hop cannot take mail now; ``result`` says why (a deferral, 4xx)."""

    def __init__(self, result: RecipientResult) -> None:
        super().__init__(result.reply)
        self.result = result


class Cached:
    """An SMTP session left open after a transaction, for the next message to its hop."""

    def __init__(self, client: smtplib.SMTP, relay: str) -> None:
        self.client = client
        self.relay = relay
        self.opened = time.monotonic()
        self.idle_since = self.opened
        self.uses = 0


class ConnectionCache:
    """Open SMTP sessions by hop, as Postfix's scache keeps them.

    Opening a session (TCP, greeting, EHLO, STARTTLS, AUTH) costs more than the transaction
    itself for small messages. A session goes back here after each message and is taken
    again by the next message to the same hop, within the same limits as Postfix: idle at
    most ``idle_limit`` seconds, open at most ``age_limit`` seconds, at most ``use_limit``
    transactions.
    """

    def __init__(self, idle_limit: float = 2.0, age_limit: float = 300.0,
                 use_limit: int = 100) -> None:
        self.idle_limit, self.age_limit, self.use_limit = idle_limit, age_limit, use_limit
        self._idle: dict[Hop, list[Cached]] = defaultdict(list)
        self._lock = threading.Lock()

    def take(self, hop: Hop) -> Cached | None:
        expired: list[Cached] = []
        found = None
        with self._lock:
            sessions = self._idle.get(hop, [])
            while sessions and found is None:
                cached = sessions.pop()
                if self._usable(cached, time.monotonic()):
                    found = cached
                else:
                    expired.append(cached)
        for cached in expired:
            quit_session(cached.client)
        return found

    def give_back(self, hop: Hop, cached: Cached) -> None:
        cached.uses += 1
        cached.idle_since = time.monotonic()
        if not self._usable(cached, cached.idle_since):
            quit_session(cached.client)
            return
        with self._lock:
            self._idle[hop].append(cached)

    def close_idle(self, everything: bool = False) -> None:
        """QUIT the sessions past their limits (all of them with ``everything``)."""
        moment = time.monotonic()
        closing: list[Cached] = []
        with self._lock:
            for sessions in self._idle.values():
                keep = [c for c in sessions if not everything and self._usable(c, moment)]
                closing.extend(c for c in sessions if c not in keep)
                sessions[:] = keep
        for cached in closing:
            quit_session(cached.client)

    def _usable(self, cached: Cached, moment: float) -> bool:
        return (moment - cached.idle_since <= self.idle_limit
                and moment - cached.opened <= self.age_limit
                and cached.uses < self.use_limit)


class SessionOpener:
    """Opens a session to a hop with its route's policy: STARTTLS (``may``, ``encrypt``,
    ``none``; the runner's ``TMAIL_RUNNER_STARTTLS`` for MX hops) and AUTH."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Opportunistic TLS, as MTAs do by default: encrypt, but accept any certificate.
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def open(self, hop: Hop) -> Cached:
        relay = str(hop)
        try:
            # Connecting in the constructor gives STARTTLS the server's name (SNI).
            client = smtplib.SMTP(hop.address.host, hop.address.port,
                                  local_hostname=self._config.hostname,
                                  timeout=self._config.runner_timeout)
        except smtplib.SMTPConnectError as exc:  # a 4xx or 5xx greeting: try the next hop
            raise HopFailed(failure(451, f"4.4.0 host {relay} refused to talk to me: "
                                         f"{exc.smtp_code} {_text(exc.smtp_error)}",
                                    relay)) from None
        try:
            _hello(client, relay)
            encrypted = self._starttls(client, hop, relay)
            if hop.route is not None and hop.route.auth_login:
                _authenticate(client, hop.route, encrypted, relay)
        except BaseException:
            client.close()
            raise
        return Cached(client, relay)

    def _starttls(self, client: smtplib.SMTP, hop: Hop, relay: str) -> bool:
        policy = hop.route.starttls if hop.route is not None else self._config.runner_starttls
        if policy != "none" and client.has_extn("starttls"):
            client.starttls(context=self._tls)
            _hello(client, relay)
            return True
        if policy == "encrypt":
            raise HopFailed(failure(451, f"4.7.4 TLS is required, but was not offered by "
                                         f"host {relay}", relay))
        return False


def _hello(client: smtplib.SMTP, relay: str) -> None:
    code, reply = client.ehlo()
    if code != 250:
        code, reply = client.helo()
    if code != 250:
        raise HopFailed(failure(451, f"4.4.0 host {relay} refused our greeting: {code} "
                                     f"{_text(reply)}", relay))


def _authenticate(client: smtplib.SMTP, route: Route, encrypted: bool, relay: str) -> None:
    """AUTH PLAIN, else LOGIN, as the server offers them: one attempt per session (a second
    mechanism would only try the same password again). The password goes only over TLS,
    unless the route says ``starttls: none`` with ``allow_plaintext_auth``; it never
    appears in a result."""
    password = route.auth_password or ""
    if not encrypted and not (route.starttls == "none" and route.allow_plaintext_auth):
        raise HopFailed(failure(451, f"4.7.0 will not send AUTH credentials to {relay} "
                                     "without TLS", relay))
    offered = client.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise HopFailed(failure(451, f"4.7.0 host {relay} offers no AUTH PLAIN or LOGIN "
                                     f"(offered: {' '.join(offered) or 'none'})", relay))
    try:
        client.auth(mechanism, _Credentials(mechanism, route.auth_login or "", password))
    except smtplib.SMTPAuthenticationError as exc:
        said = _text(exc.smtp_error)
        if password:
            said = said.replace(password, "***")  # a server that echoes it back
        raise HopFailed(failure(454, f"4.7.8 SASL authentication failed; server {relay} "
                                     f"said: {exc.smtp_code} {said}", relay)) from None


class _Credentials:
    """smtplib's ``authobject`` for PLAIN (one response) and LOGIN (the user name, then
    the password)."""

    def __init__(self, mechanism: str, login: str, password: str) -> None:
        self._mechanism, self._login, self._password = mechanism, login, password
        self._answers = 0

    def __call__(self, challenge: bytes | None = None) -> str:
        self._answers += 1
        if self._mechanism == "PLAIN":
            return f"\0{self._login}\0{self._password}"
        return self._login if self._answers == 1 else self._password


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def quit_session(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "lost connection"
    return str(exc) or type(exc).__name__
