"""Which records a listing or a bulk operation applies to (the API's and CLI's filters)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tmail.queue.record import Status, parse_time


@dataclass(frozen=True)
class RecordFilter:
    """All given criteria must match; addresses and hosts compare case-insensitively.

    ``mail_from=""`` selects the null sender (bounces), ``None`` means "any sender".
    """

    status: Status | None = None
    host: str | None = None
    rcpt: str | None = None
    mail_from: str | None = None
    older_than: float | None = None

    @property
    def is_empty(self) -> bool:
        return all(
            value is None
            for value in (self.status, self.host, self.rcpt, self.mail_from, self.older_than)
        )

    def matches(self, data: dict[str, Any], at: datetime) -> bool:
        """The test on a record's checked JSON (``parse_record``), the form listings read
        (with the status a reader shows: see ``claims.py``)."""
        if self.status is not None and data["Status"] != self.status:
            return False
        if self.host is not None and data["Host"] != self.host.lower():
            return False
        if self.rcpt is not None and data["RcptTo"].lower() != self.rcpt.lower():
            return False
        if self.mail_from is not None and data["MailFrom"].lower() != self.mail_from.lower():
            return False
        if self.older_than is None:
            return True
        added = parse_time(data["AddedAt"])
        return added is not None and (at - added).total_seconds() >= self.older_than
