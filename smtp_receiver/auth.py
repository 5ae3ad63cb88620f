"""SMTP AUTH (PLAIN and LOGIN): bcrypt off the event loop, failures limited twice.

Within a session, each failure costs the client a delay and the third one the connection
(``421``); across sessions, failures are counted per client IP (:class:`AuthFailures`), and
an address over ``TMAIL_SMTP_AUTH_FAILURE_LIMIT`` gets ``454 4.7.0`` for a while, so that
reconnecting does not buy a password guesser new tries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from aiosmtpd.smtp import SMTP

from smtp_receiver.limits import AuthFailures
from smtp_receiver.state import SessionState
from tmail.db import DatabaseUnavailable
from tmail.text import printable
from tmail.users import UserStore

log = logging.getLogger("smtp_receiver")


class Authenticator:
    def __init__(self, users: UserStore, failures: AuthFailures, *,
                 failure_delay: float = 1.0, max_session_failures: int = 3) -> None:
        self.users = users
        self.failures = failures
        self.failure_delay = failure_delay
        self.max_session_failures = max_session_failures

    async def authenticate(self, server: SMTP, state: SessionState,
                           args: list[str]) -> str | None:
        """The reply to ``AUTH <args>``; ``None`` when the connection was closed instead."""
        if self.failures.blocked(state.client_ip):
            log.warning("client=%s: AUTH refused: too many failures from this address",
                        state.client_ip)
            return "454 4.7.0 Too many failed authentications from your address, try later"
        credentials = await _read_credentials(server, args)
        if credentials is None:
            return "501 5.5.2 Cannot decode response"
        login, password = credentials
        loop = asyncio.get_running_loop()
        try:
            user = await loop.run_in_executor(None, self.users.authenticate, login, password)
        except DatabaseUnavailable as exc:  # not the client's failure: no delay, not counted
            log.warning("client=%s: AUTH for %s not checked: %s", state.client_ip,
                        printable(login), exc)
            return "451 4.3.0 Temporary authentication failure, try again later"
        if user is not None:
            state.auth_login, state.auth_relay = user.login, user.auth_relay
            return "235 2.7.0 Authentication successful"
        state.auth_failures += 1
        self.failures.record(state.client_ip)
        log.warning("client=%s: AUTH failed for %s (%d)", state.client_ip,
                    printable(login), state.auth_failures)
        await asyncio.sleep(self.failure_delay)
        if state.auth_failures >= self.max_session_failures:
            await server.push("421 4.7.0 Too many authentication failures, closing")
            if server.transport is not None:
                server.transport.close()
            return None
        return "535 5.7.8 Authentication credentials invalid"


async def _read_credentials(server: SMTP, args: list[str]) -> tuple[str, str] | None:
    """``(login, password)`` from the AUTH command and its challenges, or ``None``."""
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
