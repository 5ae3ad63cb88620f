"""Header helpers read a bounded header block, whatever the size of the message."""

from __future__ import annotations

import pytest

from tmail.message import HEADER_LIMIT, extract_message_id, has_header, split_headers

BIG_BODY = b"x" * 1_000_000


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_split_at_the_first_empty_line(newline: bytes) -> None:
    raw = b"A: 1" + newline + b"B: 2" + newline + newline + b"body" + newline + newline + b"more"
    headers, body = split_headers(raw)
    assert headers == b"A: 1" + newline + b"B: 2" + newline
    assert body == newline + b"body" + newline + newline + b"more"


def test_a_message_without_an_empty_line_has_at_most_header_limit_of_headers() -> None:
    raw = b"Subject: s\r\n" + b"X-Long: " + BIG_BODY + b"\r\nMessage-ID: <late@x>\r\n"
    headers, body = split_headers(raw)
    assert len(headers) <= HEADER_LIMIT and headers + body == raw
    assert not has_header(raw, "Message-ID")  # beyond the limit: body, as in Postfix
    assert extract_message_id(b"Message-ID: <m@x>\r\n" + BIG_BODY) == "m@x"


def test_headers_past_the_empty_line_are_body() -> None:
    raw = b"Subject: s\r\n\r\nMessage-ID: <in-body@x>\r\n"
    assert not has_header(raw, "Message-ID")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"<a@b>", "a@b"), (b"<\xc3\xa9t\xc3\xa9@b>", "\u00e9t\u00e9@b"),
     (b"<\xff@b>", "\ufffd@b"), (b"<a@b\r\n\tc>", "a@b c")],
    ids=["plain", "utf8", "invalid-utf8", "folded"],
)
def test_message_id_is_always_storable(value: bytes, expected: str) -> None:
    assert extract_message_id(b"Message-ID: " + value + b"\r\n\r\nbody") == expected
