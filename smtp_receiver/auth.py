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
from typing import Protocol

from smtp_receiver.limits import AuthFailures
from smtp_receiver.state import SessionState
from tmail.db import DatabaseUnavailable
from tmail.text import printable
from tmail.users import UserStore

log = logging.getLogger("smtp_receiver")

MECHANISMS = ("LOGIN", "PLAIN")  # as EHLO lists them


class Challenger(Protocol):
    """The session, as an AUTH exchange needs it."""

    async def challenge(self, prompt: bytes) -> bytes:
        """Send ``334 <prompt>``; the client's answer line, stripped."""
        ...


class Cancelled(Exception):
    """The client answered a challenge with ``*`` (RFC 4954 §4)."""


class Authenticator:
    def __init__(self, users: UserStore, failures: AuthFailures, *,
                 failure_delay: float = 1.0, max_session_failures: int = 3) -> None:
        self.users = users
        self.failures = failures
        self.failure_delay = failure_delay
        self.max_session_failures = max_session_failures

    async def authenticate(self, session: Challenger, state: SessionState,
                           args: list[str]) -> str:
        """The reply to ``AUTH <args>`` (a known mechanism, its initial response if any);
        ``state.hang_up`` is set when the session must end after it."""
        if self.failures.blocked(state.client_ip):
            log.warning("client=%s: AUTH refused: too many failures from this address",
                        state.client_ip)
            return "454 4.7.0 Too many failed authentications from your address, try later"
        try:
            credentials = await _read_credentials(session, args)
        except Cancelled:
            return "501 5.7.0 Authentication aborted"
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
            state.hang_up = True
            return "421 4.7.0 Too many authentication failures, closing"
        return "535 5.7.8 Authentication credentials invalid"


async def _answer(session: Challenger, prompt: bytes) -> bytes:
    """The decoded answer to one challenge (``prompt`` in clear, sent base64-encoded)."""
    line = await session.challenge(base64.b64encode(prompt))
    if line == b"*":
        raise Cancelled()
    return base64.b64decode(line, validate=True)


def _initial(response: str) -> bytes:
    """An initial response; ``=`` is an empty one (RFC 4954 §4)."""
    return b"" if response == "=" else base64.b64decode(response, validate=True)


async def _read_credentials(session: Challenger, args: list[str]) -> tuple[str, str] | None:
    """``(login, password)`` from the AUTH command and its challenges, or ``None``."""
    mechanism = args[0].upper()
    try:
        if mechanism == "PLAIN":
            raw = _initial(args[1]) if len(args) > 1 else await _answer(session, b"")
            _, login, password = raw.split(b"\0", 2)
        else:
            login = _initial(args[1]) if len(args) > 1 else await _answer(session, b"Username:")
            password = await _answer(session, b"Password:")
        return login.decode(), password.decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
