"""Reading and writing the few headers tmail cares about, on raw message bytes.

Messages are kept byte for byte as received; these helpers only look at the header block or
prepend a header line, so that 8-bit or malformed bodies pass through untouched.
"""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32


def split_headers(raw: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line: (header block including its final newline, body)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index != -1:
            cut = index + len(separator) // 2
            return raw[:cut], raw[cut:]
    return raw, b""


def parse_headers(raw: bytes):  # type: ignore[no-untyped-def]
    """The header block as an ``email.message.Message`` (lenient, never raises)."""
    return BytesHeaderParser(policy=compat32).parsebytes(split_headers(raw)[0])


def extract_message_id(raw: bytes) -> str:
    """The Message-ID without angle brackets (as tmail's API shows it), or ``""``."""
    value = parse_headers(raw).get("Message-ID")
    if value is None:
        return ""
    return str(value).strip().strip("<>").strip()


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
