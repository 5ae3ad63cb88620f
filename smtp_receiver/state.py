"""What the receiver knows and counts about one SMTP session, against the limits of
``tmail.config``: the client, its greeting and login, the transaction in progress."""

from __future__ import annotations

from dataclasses import dataclass, field

from tmail.queue import Target


@dataclass
class SessionState:
    """Per-session state (Postfix's smtpd keeps the same counters in its session state).

    ``errors`` and ``junk`` start again after each accepted message, as a client that
    delivers mail is doing what it came for; ``rejected_rcpts`` never does, so that a
    directory harvester cannot hide its guesses between messages.
    """

    client_ip: str
    submission: bool = False  # on a submission listener (AUTH first, sender ownership)
    tls: bool = False  # TLS is up: STARTTLS done, or the implicit-TLS listener
    helo: str = ""  # the HELO/EHLO name (empty: none accepted yet)
    extended: bool = False  # EHLO, not HELO
    errors: int = 0
    junk: int = 0
    rejected_rcpts: int = 0
    auth_failures: int = 0
    auth_login: str = ""  # the authenticated user (empty: none)
    auth_relay: bool = False  # that user may relay
    hang_up: bool = False  # close the connection once the next reply is sent
    # the transaction: MAIL FROM (None: no MAIL yet; "<>": the null sender), its options
    mail_from: str | None = None
    smtputf8: bool = False  # the transaction asked for SMTPUTF8 (RFC 6531)
    rcpt_tos: list[str] = field(default_factory=list)
    # the accepted recipients, each with what it expands to
    targets: dict[str, list[Target]] = field(default_factory=dict)

    def reset_transaction(self) -> None:
        """RSET, HELO/EHLO, the end of DATA: the envelope is forgotten, the session is not."""
        self.mail_from, self.smtputf8 = None, False
        self.rcpt_tos = []
        self.targets = {}

    def forget_greeting_and_auth(self) -> None:
        """After STARTTLS the client starts again with EHLO (RFC 3207 §4.2)."""
        self.reset_transaction()
        self.helo, self.extended = "", False
        self.auth_login, self.auth_relay = "", False

    def message_accepted(self) -> None:
        self.errors = 0
        self.junk = 0
