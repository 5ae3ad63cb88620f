"""What one delivery attempt did for one recipient, in SMTP's terms.

A remote reply is hostile input: smtplib joins the lines of a multi-line reply with ``\\n``,
and a server may put any byte in them. The text is cleaned once, here, so that every use
(the log line, ``LastError``, the DSN's ``Diagnostic-Code``) gets whole lines with no control
characters: one line for logs and ``LastError`` (as Postfix logs it), the reply's lines for
the DSN, which folds them (RFC 3464 §2.3.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tmail.dsn import text_lines

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class RecipientResult:
    """``code`` is the SMTP reply code (or one we make up for local errors); ``text`` the
    reply's lines after the code, joined with ``\\n`` (cleaned: see the module doc)."""

    code: int
    text: str
    relay: str = "none"
    # RFC 3464 §2.3.6: the diagnostic's type ("smtp" for a reply; "x-unix" for a local
    # program's output) and, when it is not the reply itself, its text (a command's stderr)
    diagnostic_type: str = "smtp"
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", "\n".join(text_lines(self.text)))
        if self.detail:
            object.__setattr__(self, "detail", "\n".join(text_lines(self.detail)))

    @property
    def sent(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def status(self) -> str:
        """The enhanced status code: from the reply when it has one, else from the class."""
        match = _ENHANCED.match(self.text)
        if match:
            return ".".join(match.groups())
        return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}[self.code // 100]

    @property
    def outcome(self) -> str:
        return "sent" if self.sent else "bounced" if self.permanent else "deferred"

    @property
    def lines(self) -> list[str]:
        """The reply as the server sent it: ``550-first``, ..., ``550 last``."""
        texts = self.text.split("\n")
        return [f"{self.code}-{t}" for t in texts[:-1]] + [f"{self.code} {texts[-1]}"]

    @property
    def reply(self) -> str:
        """The reply on one line (logs, ``LastError``)."""
        return " ".join(self.lines)

    @property
    def diagnostic(self) -> str:
        """The DSN's ``Diagnostic-Code`` value; its lines are folded by :mod:`tmail.dsn`."""
        return f"{self.diagnostic_type}; " + (self.detail or "\n".join(self.lines))


def failure(code: int, text: str, relay: str = "none") -> RecipientResult:
    return RecipientResult(code, text, relay)
