"""Reading and writing the few headers tmail cares about, on raw message bytes.

Messages are kept byte for byte as received; these helpers only look at the header block or
prepend a header line, so that 8-bit or malformed bodies pass through untouched.
"""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32

# Postfix's header_size_limit: only this much of a message is ever parsed as its header
# block, so that a 25 MiB message without an empty line costs no more than a small one.
HEADER_LIMIT = 102_400


def header_end(raw: bytes | bytearray, start: int = 0, limit: int = HEADER_LIMIT) -> int | None:
    """Where the header block of ``raw`` ends (after the last header line's newline, before
    the empty line), searching from ``start`` and only in the first ``limit`` bytes; ``None``
    when no empty line is there."""
    found = [index for separator in (b"\r\n\r\n", b"\n\n")
             if (index := raw.find(separator, start, limit)) != -1]
    if not found:
        return None
    index = min(found)
    return index + (2 if raw[index:index + 2] == b"\r\n" else 1)


def split_headers(raw: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line: (header block including its final newline, body).

    Only the first HEADER_LIMIT bytes can be headers (as in Postfix, the excess is body):
    without an empty line there, the block ends at the last line end within the limit.
    """
    end = header_end(raw)
    if end is None:
        if len(raw) <= HEADER_LIMIT:
            return raw, b""
        end = raw.rfind(b"\n", 0, HEADER_LIMIT) + 1 or HEADER_LIMIT
    return raw[:end], raw[end:]


def header_block(raw: bytes) -> bytes:
    """The header block alone, at most HEADER_LIMIT bytes (the body is never copied)."""
    end = header_end(raw)
    return raw[:end] if end is not None else raw[:HEADER_LIMIT]


def parse_headers(raw: bytes):  # type: ignore[no-untyped-def]
    """The header block as an ``email.message.Message`` (lenient, never raises)."""
    return BytesHeaderParser(policy=compat32).parsebytes(header_block(raw))


def header_fields(block: bytes, name: str) -> list[bytes]:
    """The value of every ``name`` field of a header block, unfolded, as the bytes the client
    sent (the email package would turn an 8-bit value into replacement characters)."""
    key = name.lower().encode()
    found: list[bytearray] = []
    current: bytearray | None = None
    for line in block.splitlines():
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current += b" " + line.strip()
            continue
        current = None
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == key:
            current = bytearray(value.strip())
            found.append(current)
    return [bytes(value) for value in found]


def first_field(raw: bytes, name: str) -> bytes | None:
    """The value of the first ``name`` field of the header block of ``raw``, or ``None``."""
    values = header_fields(header_block(raw), name)
    return values[0] if values else None


def extract_message_id(raw: bytes) -> str:
    """The Message-ID without angle brackets (as tmail's API shows it), or ``""``.

    The value is made storable whatever the client sent: 8-bit bytes are read as UTF-8
    (invalid sequences replaced), folding and control characters are dropped.
    """
    value = first_field(raw, "Message-ID")
    if value is None:
        return ""
    text = value.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split()).strip("<> ")


def has_header(raw: bytes, name: str) -> bool:
    return parse_headers(raw).get(name) is not None


def new_message_id(hostname: str) -> str:
    return email.utils.make_msgid(domain=hostname)


def format_date() -> str:
    return email.utils.formatdate(localtime=True)


def prepend_header(raw: bytes, name: str, value: str) -> bytes:
    """Add ``name: value`` on top, with the line ending the message already uses."""
    newline = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    return f"{name}: {value}".encode() + newline + raw
