"""The DATA stream stages on a real asyncio.StreamReader, fed the way a socket feeds it: in
pieces cut anywhere, with a small buffer limit so that every path is taken."""

from __future__ import annotations

import asyncio
import random

import pytest

from smtp_receiver.data import ContentError, Deadline, Framer, HeaderBlock, wire_chunks

AFTER = b"QUIT\r\n"  # a pipelined command: must stay in the reader, untouched


async def _read(wire: bytes, pieces: list[int], limit: int) -> tuple[bytes, bytes]:
    reader = asyncio.StreamReader(limit=limit)

    async def feed() -> None:
        position = 0
        for size in pieces:
            reader.feed_data(wire[position:position + size])
            position += size
            await asyncio.sleep(0)
        reader.feed_data(wire[position:])
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    framer = Framer(normalize=False)
    content = b"".join([framer.feed(chunk) async for chunk in wire_chunks(
        reader, Deadline(10, 500))]) + framer.finish()
    await feeder
    return content, await reader.read()


CASES = [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    (b"\r\r\n.\r\n", None),  # a bare CR
    (b".\r.\r\n.\r\n", None),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"a\r\n..\r\n...\r\n.\r\n", b"a\r\n.\r\n..\r\n"),
    (b"Subject: x\r\n\r\n" + b"line\r\n" * 300 + b".\r\n", b"Subject: x\r\n\r\n"
     + b"line\r\n" * 300),
    (b"x\r\n.\n.\r\n", None),  # "\n." is no end of data, and a bare LF
]


@pytest.mark.parametrize(("wire", "content"), CASES)
@pytest.mark.parametrize("seed", range(20))
def test_data_ends_at_crlf_dot_crlf_wherever_the_reads_cut_it(
    wire: bytes, content: bytes | None, seed: int
) -> None:
    rng = random.Random(seed)
    pieces = [rng.randint(1, 7) for _ in range(len(wire) // 3 + 1)]
    if content is None:
        with pytest.raises(ContentError, match="bare_newline"):
            asyncio.run(_read(wire + AFTER, pieces, limit=16))
        return
    got, rest = asyncio.run(_read(wire + AFTER, pieces, limit=16))
    assert (got, rest) == (content, AFTER)


def test_a_line_longer_than_1000_octets_is_refused() -> None:
    framer = Framer(normalize=False)
    with pytest.raises(ContentError, match="line_too_long"):
        framer.feed(b"x" * 1001 + b"\r\n")
    with pytest.raises(ContentError, match="line_too_long"):
        Framer(normalize=False).feed(b"x" * 2000)  # no end in sight is too long already


def test_normalising_turns_every_bare_newline_into_crlf() -> None:
    assert Framer(normalize=True).feed(b"a\nb\rc\r\n.d\n") == b"a\r\nb\r\nc\r\nd\r\n"


def test_the_header_block_ends_at_the_empty_line_or_the_limit() -> None:
    head = HeaderBlock(limit=100)
    head.add(b"Received: a\r\nreceived : b\r\n Received: folded\r\nDate: x\r\n")
    assert not head.complete
    head.add(b"\r\nReceived: in the body\r\n")
    assert head.complete and head.count("Received") == 2 and head.has("date")
    assert not head.has("Message-ID")
    long = HeaderBlock(limit=100)
    long.add(b"Received: x\r\n" * 20)
    assert long.complete and long.count("Received") == 7  # what fits in the limit


def test_the_deadline_grows_with_the_bytes_received() -> None:
    now = [0.0]
    deadline = Deadline(10, 500, clock=lambda: now[0])
    now[0] = 9.0
    assert deadline.remaining() == pytest.approx(1.0)
    deadline.received = 5000
    assert deadline.remaining() == pytest.approx(11.0)
