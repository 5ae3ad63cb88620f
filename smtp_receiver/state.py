"""What the receiver counts about one SMTP session, against the limits of ``tmail.config``."""

from __future__ import annotations

from dataclasses import dataclass, field

from tmail.queue import Target


@dataclass
class SessionState:
    """Per-session counters (Postfix's smtpd keeps the same ones in its session state).

    ``errors`` and ``junk`` start again after each accepted message, as a client that
    delivers mail is doing what it came for; ``rejected_rcpts`` never does, so that a
    directory harvester cannot hide its guesses between messages.
    """

    client_ip: str
    errors: int = 0
    junk: int = 0
    rejected_rcpts: int = 0
    auth_failures: int = 0
    auth_login: str = ""  # the authenticated user (empty: none)
    auth_relay: bool = False  # that user may relay
    smtputf8: bool = False  # the current transaction asked for SMTPUTF8 (RFC 6531)
    hang_up: bool = False  # close the connection once the next reply is sent
    # the current transaction's accepted recipients, each with what it expands to
    targets: dict[str, list[Target]] = field(default_factory=dict)

    def forget_transaction_and_auth(self) -> None:
        self.auth_login, self.auth_relay, self.smtputf8 = "", False, False

    def message_accepted(self) -> None:
        self.errors = 0
        self.junk = 0
