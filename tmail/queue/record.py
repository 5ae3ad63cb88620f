"""One queue record: one recipient of one queued message, as tmail's API shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import orjson


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
    """A record file that is not a record (bad JSON, a missing or mistyped key): quarantined."""


# The keys every record has, and the type each key must have (optional keys: extensions that
# records written by older versions lack).
_REQUIRED = {"Id": int, "Uuid": str, "Key": str, "MailFrom": str, "RcptTo": str, "Host": str,
             "AddedAt": str, "NextDeliveryScheduledAt": str, "Status": int}
_OPTIONAL = {"AuthUser": str, "MessageId": str, "DeliveryFailedCount": int, "Size": int,
             "ClientAddr": str, "LastError": str, "LastAttemptAt": str, "DelayWarned": bool,
             "Node": str, "OrigRcpt": str, "Transport": str, "Pipe": str}
# Transports a record may name; without "Transport" it is derived (local or remote domain).
TRANSPORTS = frozenset({"pipe"})
_TIMES = ("AddedAt", "NextDeliveryScheduledAt", "LastAttemptAt")
_STATUSES = frozenset(int(status) for status in Status)


def parse_record(data: bytes, record_id: int | None = None) -> dict[str, Any]:
    """The one reader of record files: parsed and checked JSON, or :class:`RecordError`.

    Listings use the checked dict as it is (fast); :meth:`Record.from_bytes` builds on it.
    Both therefore accept and quarantine exactly the same files, and whatever a listing
    yields can be summarised, filtered and turned into a :class:`Record` without failing.
    """
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise RecordError("not a JSON object")
    for key, kind in _REQUIRED.items():
        if type(parsed.get(key)) is not kind:
            raise RecordError(f"not a queue record: {key} is missing or not {kind.__name__}")
    for key, kind in _OPTIONAL.items():
        if key in parsed and type(parsed[key]) is not kind:
            raise RecordError(f"not a queue record: {key} is not {kind.__name__}")
    if parsed["Status"] not in _STATUSES:
        raise RecordError(f"not a queue record: unknown Status {parsed['Status']}")
    try:
        for key in _TIMES:
            parse_time(parsed.get(key, ""))
    except ValueError as exc:
        raise RecordError(f"not a queue record: {key}: {exc}") from exc
    _check_transport(parsed)
    if record_id is not None and parsed["Id"] != record_id:
        raise RecordError(f"file {record_id}.json holds Id {parsed['Id']}")
    return parsed


def _check_transport(parsed: dict[str, Any]) -> None:
    """A record names its transport only for a pipe target, and then carries its command."""
    if "Transport" in parsed and parsed["Transport"] not in TRANSPORTS:
        raise RecordError(f"not a queue record: unknown Transport {parsed['Transport']!r}")
    if ("Transport" in parsed) != bool(parsed.get("Pipe")):
        raise RecordError('not a queue record: Pipe goes with Transport "pipe", and only then')


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
    node: str = ""  # the TMAIL_NODE that accepted the message; "" in records before nodes
    # alias expansion (written at enqueue): the address the client gave, and a pipe target's
    # transport ("pipe") and command; "" when absent (the transport is then derived)
    orig_rcpt: str = ""
    transport: str = ""
    pipe: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
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
            "Node": self.node,
        }
        if self.orig_rcpt:
            data["OrigRcpt"] = self.orig_rcpt
        if self.transport:
            data["Transport"] = self.transport
            data["Pipe"] = self.pipe
        return data

    def to_bytes(self) -> bytes:
        """The on-disk form: one JSON object and a newline, readable with ``cat`` and ``jq``."""
        return json.dumps(self.to_json(), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """A record from JSON that :func:`parse_record` checked."""
        return cls(
            id=data["Id"],
            uuid=data["Uuid"],
            key=data["Key"],
            mail_from=data["MailFrom"],
            auth_user=data.get("AuthUser", ""),
            rcpt_to=data["RcptTo"],
            message_id=data.get("MessageId", ""),
            host=data["Host"],
            added_at=parse_time(data["AddedAt"]) or now(),
            next_delivery_at=parse_time(data["NextDeliveryScheduledAt"]) or now(),
            status=Status(data["Status"]),
            delivery_failed_count=data.get("DeliveryFailedCount", 0),
            size=data.get("Size", 0),
            client_addr=data.get("ClientAddr", ""),
            last_error=data.get("LastError", ""),
            last_attempt_at=parse_time(data.get("LastAttemptAt", "")),
            delay_warned=data.get("DelayWarned", False),
            node=data.get("Node", ""),
            orig_rcpt=data.get("OrigRcpt", ""),
            transport=data.get("Transport", ""),
            pipe=data.get("Pipe", ""),
        )

    @classmethod
    def from_bytes(cls, data: bytes, record_id: int | None = None) -> Record:
        """Parse a record file; :class:`RecordError` if it is not a record (of ``record_id``)."""
        return cls.from_json(parse_record(data, record_id))

    def evolve(self, **changes: Any) -> Record:
        return replace(self, **changes)

    def age_seconds(self, at: datetime | None = None) -> float:
        return ((at or now()) - self.added_at).total_seconds()
