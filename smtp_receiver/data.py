"""The DATA phase, streamed: from the client's socket to a spool file, in bounded memory.

A DATA phase kept whole in memory (as aiosmtpd, the receiver's first protocol, did) costs
gigabytes for fifty 25 MiB messages at once. Here the bytes go through
three small stages, each holding at most a chunk or the header block:

1. :func:`wire_chunks` reads the bytes as sent, up to the ``CRLF . CRLF`` that ends them and
   never past it (pipelined commands follow), under a deadline for the whole phase.
2. :class:`Framer` turns them into message content: it undoes dot-stuffing (RFC 5321
   §4.5.2) and checks every line: a bare CR or LF is refused (or normalised to CRLF, Postfix's
   ``smtpd_forbid_bare_newline``) so that nothing we queue and relay can smuggle a message
   past the next server's idea of where this one ends; a line over 1,000 octets is refused.
3. :class:`HeaderBlock` keeps the start of the message until its header block is complete
   (the blank line, or ``HEADER_LIMIT``: Postfix's 100 KiB), so that the receiver can count
   ``Received:`` headers (mail loops) and decide which headers of its own to write first;
   then everything else is written through to the spool as it arrives.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from tmail.message import HEADER_LIMIT, header_fields

TERMINATOR = b"\r\n.\r\n"
MAX_LINE = 1001  # octets with the CRLF and a transparency dot (RFC 5321 §4.5.3.1.6)
_NEWLINES = re.compile(rb"\r\n|\r|\n")


class ContentError(Exception):
    """The message is refused for what it contains; ``reason`` is the metrics class."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Deadline:
    """The whole DATA phase must end by ``timeout`` seconds after it began plus one second
    per ``min_rate`` bytes received (Postfix's ``smtpd_per_request_deadline`` with
    ``smtpd_min_data_rate``): a client that trickles bytes cannot hold a session for ever,
    and a large message on a slow but honest link still gets through."""

    def __init__(self, timeout: float, min_rate: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._timeout = timeout
        self._min_rate = min_rate
        self.received = 0

    def remaining(self) -> float:
        return self._start + self._timeout + self.received / self._min_rate - self._clock()


class ByteStream(Protocol):
    """What :func:`wire_chunks` reads: ``asyncio.StreamReader``'s two reads, with its
    ``LimitOverrunError`` and ``IncompleteReadError`` (the receiver's
    :class:`~smtp_receiver.connection.Connection`, or a StreamReader in tests)."""

    async def readuntil(self, separator: bytes) -> bytes: ...

    async def readexactly(self, count: int) -> bytes: ...


async def wire_chunks(reader: ByteStream, deadline: Deadline) -> AsyncIterator[bytes]:
    """The DATA bytes as sent (still dot-stuffed), up to and with the CRLF that precedes the
    final dot line; raises ``TimeoutError`` when the deadline passes.

    ``StreamReader.readuntil`` finds every terminator that lies wholly in what it has not
    returned yet, and when the terminator is not in its buffer it hands out all but the
    last four bytes, so no terminator can start in what was handed out. Only the very
    beginning needs care: the stream starts as if after a CRLF, so an empty message is just
    ``.CRLF``. There the bytes are read a few at a time, never more than the terminator
    still needs, until they stop matching one.
    """
    seen = bytearray(b"\r\n")  # the virtual CRLF before the first line, then what was read
    matched = 2
    while matched:
        async with asyncio.timeout(deadline.remaining()):
            seen += await reader.readexactly(len(TERMINATOR) - matched)
        if seen.endswith(TERMINATOR):
            yield bytes(seen[2:-3])
            return
        matched = next((n for n in range(4, 0, -1) if seen.endswith(TERMINATOR[:n])), 0)
    deadline.received += len(seen) - 2
    yield bytes(seen[2:])
    while True:
        try:
            async with asyncio.timeout(deadline.remaining()):
                chunk = await reader.readuntil(TERMINATOR)
        except asyncio.LimitOverrunError as overrun:
            async with asyncio.timeout(deadline.remaining()):
                chunk = await reader.readexactly(overrun.consumed)
            deadline.received += len(chunk)
            yield chunk
        else:
            deadline.received += len(chunk)
            yield chunk[:-3]
            return


class Framer:
    """Dot-stuffed lines in, checked message content out, one chunk at a time."""

    def __init__(self, normalize: bool) -> None:
        self._normalize = normalize
        self._partial = b""  # the start of a line whose end has not arrived yet

    def feed(self, wire: bytes) -> bytes:
        """The content of the complete lines in ``wire`` (and what came before it)."""
        buffer = self._partial + wire if self._partial else wire
        cut = buffer.rfind(b"\n") + 1
        self._partial = buffer[cut:]
        if len(self._partial) >= MAX_LINE:
            raise ContentError("line_too_long")
        return self._lines(buffer[:cut]) if cut else b""

    def finish(self) -> bytes:
        """Whatever is left: nothing, as the content before the terminator ends with CRLF."""
        rest, self._partial = self._partial, b""
        return self._lines(rest) if rest else b""

    def _lines(self, block: bytes) -> bytes:
        if max(map(len, block.split(b"\n"))) >= MAX_LINE:
            raise ContentError("line_too_long")
        newlines = block.count(b"\n")
        if block.count(b"\r\n") != newlines or block.count(b"\r") != newlines:
            if not self._normalize:
                raise ContentError("bare_newline")
            block = _NEWLINES.sub(b"\r\n", block)
        if block.startswith(b"."):
            block = block[1:]
        return block.replace(b"\r\n.", b"\r\n")


class HeaderBlock:
    """The start of the message, held until its header block is complete."""

    def __init__(self, limit: int = HEADER_LIMIT) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self.complete = False
        self._names: list[bytes] = []
        self._block = b""

    def add(self, content: bytes) -> None:
        searched_from = max(0, len(self._buffer) - 3)
        self._buffer += content
        end = b"\r\n" if self._buffer.startswith(b"\r\n") else None
        if end or self._buffer.find(b"\r\n\r\n", searched_from) != -1 or (
                len(self._buffer) >= self._limit):
            self.finish()

    def finish(self) -> None:
        if self.complete:
            return
        self.complete = True
        end = 0 if self._buffer.startswith(b"\r\n") else self._buffer.find(b"\r\n\r\n")
        if end == -1 or end > self._limit:  # no empty line within the limit: the block
            end = self._buffer.rfind(b"\r\n", 0, self._limit)  # ends at the last line end
        block = self._block = bytes(self._buffer[:max(end, 0)])
        self._names = [line.partition(b":")[0].strip().lower()
                       for line in block.split(b"\r\n") if line[:1] not in (b" ", b"\t")]

    def take(self) -> bytes:
        """The bytes held so far (the caller writes them out); the block stays parsed."""
        data, self._buffer = bytes(self._buffer), bytearray()
        return data

    def count(self, name: str) -> int:
        key = name.lower().encode()
        return sum(1 for found in self._names if found == key)

    def has(self, name: str) -> bool:
        return self.count(name) > 0

    def values(self, name: str) -> list[bytes]:
        """The value of every ``name`` field, unfolded, as the bytes the client sent (for
        the few fields a rule reads: the submission ports check ``From:``)."""
        return header_fields(self._block, name)


class Spool(Protocol):
    """Where a message goes while it arrives (``tmail.queue.spool.Spool``)."""

    def write(self, data: bytes) -> None: ...

    @property
    def size(self) -> int: ...

    def discard(self) -> None: ...


@dataclass
class Received:
    """The outcome of a DATA phase: a spool holding the message, or why there is none."""

    spool: Spool | None
    refusal: str = ""  # a ContentError reason, or "queue_error" with ``error`` set
    error: OSError | None = None
    hops: int = 0


class MessageWriter:
    """Content in; out to a spool, our own headers first once the header block is known."""

    def __init__(self, max_size: int, max_hops: int, open_spool: Callable[[], Spool],
                 our_headers: Callable[[HeaderBlock], bytes]) -> None:
        self._max_size = max_size
        self._max_hops = max_hops
        self._open_spool = open_spool
        self._our_headers = our_headers
        self.head = HeaderBlock()
        self.spool: Spool | None = None
        self.size = 0

    def add(self, content: bytes) -> None:
        self.size += len(content)
        if self.size > self._max_size:
            raise ContentError("too_big")
        if self.spool is not None:
            self.spool.write(content)
            return
        self.head.add(content)
        if self.head.complete:
            self._start()

    def finish(self) -> None:
        if self.spool is None:
            self.head.finish()
            self._start()

    def _start(self) -> None:
        if self.head.count("Received") >= self._max_hops:
            raise ContentError("too_many_hops")
        self.spool = self._open_spool()
        self.spool.write(self._our_headers(self.head) + self.head.take())

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.discard()
            self.spool = None


async def receive(chunks: AsyncIterator[bytes], framer: Framer, writer: MessageWriter) -> Received:
    """Read every chunk to the end whatever happens (the client is still sending: the
    reply comes after its final dot), writing while nothing has gone wrong."""
    refusal, error = "", None
    try:
        async for wire in chunks:
            if refusal:
                continue
            try:
                writer.add(framer.feed(wire))
            except ContentError as exc:
                refusal = exc.reason
            except OSError as exc:  # QueueWriteError: the spool could not be written
                refusal, error = "queue_error", exc
            if refusal:
                writer.discard()
        if not refusal:
            try:
                writer.add(framer.finish())
                writer.finish()
            except ContentError as exc:
                refusal = exc.reason
            except OSError as exc:
                refusal, error = "queue_error", exc
    except BaseException:
        writer.discard()
        raise
    if refusal:
        writer.discard()
    return Received(writer.spool, refusal, error, writer.head.count("Received"))

