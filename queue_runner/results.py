"""What one delivery attempt did for one recipient, in SMTP's terms."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class RecipientResult:
    """``code`` is the SMTP reply code (or one we make up for local errors)."""

    code: int
    text: str
    relay: str = "none"

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
    def reply(self) -> str:
        return f"{self.code} {self.text}"


def failure(code: int, text: str, relay: str = "none") -> RecipientResult:
    return RecipientResult(code, text, relay)
