"""One queue record: one recipient of one queued message, as tmail's API shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """tmail's record states (0-3), plus 4 for Postfix-style held mail."""

    IN_DELIVERY = 0
    DISCARD = 1  # an admin discarded it while a delivery attempt was running
    SCHEDULED = 2
    BOUNCE = 3  # an admin bounced it while a delivery attempt was running
    HELD = 4


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime | None) -> str:
    """RFC 3339 with an explicit offset, as tmail writes it; ``""`` for "never"."""
    return moment.isoformat() if moment else ""


def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class RecordError(ValueError):
    """A record file that parses as JSON but is not a record (quarantined like bad JSON)."""


@dataclass(frozen=True)
class Record:
    """A queue record. ``to_json`` gives the seed's keys first, then tmail-py's extensions."""

    id: int
    uuid: str
    key: str
    mail_from: str
    auth_user: str
    rcpt_to: str
    message_id: str
    host: str
    added_at: datetime
    next_delivery_at: datetime
    status: Status
    delivery_failed_count: int = 0
    # extensions: all optional so that records written by older versions still load
    size: int = 0
    client_addr: str = ""
    last_error: str = ""
    last_attempt_at: datetime | None = None
    delay_warned: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "Uuid": self.uuid,
            "Key": self.key,
            "MailFrom": self.mail_from,
            "AuthUser": self.auth_user,
            "RcptTo": self.rcpt_to,
            "MessageId": self.message_id,
            "Host": self.host,
            "AddedAt": format_time(self.added_at),
            "NextDeliveryScheduledAt": format_time(self.next_delivery_at),
            "Status": int(self.status),
            "DeliveryFailedCount": self.delivery_failed_count,
            "Size": self.size,
            "ClientAddr": self.client_addr,
            "LastError": self.last_error,
            "LastAttemptAt": format_time(self.last_attempt_at),
            "DelayWarned": self.delay_warned,
        }

    def to_bytes(self) -> bytes:
        """The on-disk form: one JSON object and a newline, readable with ``cat`` and ``jq``."""
        return json.dumps(self.to_json(), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: Any) -> Record:
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        try:
            return cls(
                id=int(data["Id"]),
                uuid=str(data["Uuid"]),
                key=str(data["Key"]),
                mail_from=str(data["MailFrom"]),
                auth_user=str(data.get("AuthUser", "")),
                rcpt_to=str(data["RcptTo"]),
                message_id=str(data.get("MessageId", "")),
                host=str(data["Host"]),
                added_at=parse_time(data["AddedAt"]) or now(),
                next_delivery_at=parse_time(data["NextDeliveryScheduledAt"]) or now(),
                status=Status(int(data["Status"])),
                delivery_failed_count=int(data.get("DeliveryFailedCount", 0)),
                size=int(data.get("Size", 0)),
                client_addr=str(data.get("ClientAddr", "")),
                last_error=str(data.get("LastError", "")),
                last_attempt_at=parse_time(data.get("LastAttemptAt", "")),
                delay_warned=bool(data.get("DelayWarned", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"not a queue record: {exc!r}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        try:
            return cls.from_json(json.loads(data))
        except json.JSONDecodeError as exc:
            raise RecordError(f"invalid JSON: {exc}") from exc

    def evolve(self, **changes: Any) -> Record:
        return replace(self, **changes)

    def age_seconds(self, at: datetime | None = None) -> float:
        return ((at or now()) - self.added_at).total_seconds()
