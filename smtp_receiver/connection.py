"""One client connection as the SMTP session sees it: lines in, replies out, in batches.

An ``asyncio.Protocol`` with one input buffer and one list of pending replies, and nothing
else per connection (no StreamReader, StreamWriter or reader task of their own):

* every command line comes out of the buffer the socket fills; a line already there is
  returned without a suspension, a missing one is awaited under its deadline (the whole
  line must arrive within ``timeout``, however slowly it trickles);
* replies are collected and written in one ``transport.write`` when the session next waits
  for input, so a pipelined batch (RFC 2920) is answered in one segment, and a reply the
  client does not read holds the session only until the deadline;
* DATA is read with :meth:`readuntil`/:meth:`readexactly` (the subset of StreamReader that
  :func:`smtp_receiver.data.wire_chunks` uses), reading pauses while ``LIMIT`` bytes wait
  unread (the spool write falling behind), and resumes once they are consumed;
* STARTTLS goes through ``loop.start_tls``; what the client pipelined after it in clear text
  is thrown away (RFC 3207 §4.2 and the command-injection flaw of CVE-2011-0411).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

LIMIT = 65_536  # bytes read ahead before reading pauses; a DATA chunk is at most this


class LineTooLong(Exception):
    """A command line longer than ``LIMIT``: discarded up to its end before this is raised."""


class Closed(Exception):
    """The client went away (EOF or a reset): the session ends without a reply."""


class Connection(asyncio.Protocol):
    def __init__(self, start: Callable[[Connection], None]) -> None:
        self._start = start  # builds the session once the transport is there
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._paused = False
        self._can_write: asyncio.Future[None] | None = None  # set while writing is paused
        self.on_lost: Callable[[], None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._start(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > 2 * LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.transport = None
        self._wake()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self._can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        self._can_write = None

    # --- properties of the connection -------------------------------------------------------

    def peer_ip(self) -> str:
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    def pending_input(self) -> bool:
        """Bytes the client sent that no command has read yet."""
        return bool(self._buffer)

    def discard_input(self) -> None:
        del self._buffer[:]

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    # --- replies ----------------------------------------------------------------------------

    def reply(self, line: bytes) -> None:
        """Queue one reply line (CRLF added); sent at the next :meth:`flush`."""
        self._replies.append(line + b"\r\n")

    def _send(self) -> None:
        if self._replies and not self.closed:
            assert self.transport is not None
            self.transport.write(b"".join(self._replies))
        self._replies.clear()

    async def flush(self, timeout: float) -> None:
        """Send the queued replies in one write; wait (at most ``timeout``) while the client
        leaves earlier replies unread beyond the transport's high-water mark."""
        self._send()
        if self._can_write is not None:
            async with asyncio.timeout(timeout):
                await self._can_write

    def close(self, timeout: float) -> None:
        """Send what is queued, then close. The transport closes once its buffer is sent; a
        client that does not read it loses the connection after ``timeout``."""
        self._send()
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(timeout, transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- reading ----------------------------------------------------------------------------

    async def readline(self, timeout: float, flush_timeout: float) -> bytes:
        """The next line, with its line end; the queued replies are sent first if it has
        not arrived yet. Raises ``TimeoutError`` when the line is not whole within
        ``timeout``, :class:`LineTooLong`, or :class:`Closed`."""
        end = self._buffer.find(b"\n")
        if end >= 0:
            return self._take(end + 1)
        await self.flush(flush_timeout)
        deadline = self.loop.time() + timeout
        searched, too_long = 0, False
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                line = self._take(end + 1)
                if too_long:
                    raise LineTooLong()
                return line
            if len(self._buffer) > LIMIT:  # keep only what the line end may be in
                too_long = True
                self._take(len(self._buffer))
            searched = len(self._buffer)
            await self._wait(deadline)

    async def readuntil(self, separator: bytes) -> bytes:
        """``asyncio.StreamReader.readuntil`` with its ``LIMIT``: the bytes up to and with
        ``separator``, or ``LimitOverrunError`` (``consumed``: how many may be read without
        cutting a separator) when ``LIMIT`` bytes hold none."""
        searched = 0
        while True:
            end = self._buffer.find(separator, searched)
            if end >= 0:
                return self._take(end + len(separator))
            searched = max(0, len(self._buffer) + 1 - len(separator))
            if searched > LIMIT:
                raise asyncio.LimitOverrunError("separator not found within the limit",
                                                searched)
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), None)
            await self._wait(None)

    async def readexactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), count)
            await self._wait(None)
        return self._take(count)

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        if self._paused and len(self._buffer) <= LIMIT and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def _wait(self, deadline: float | None) -> None:
        """Until more bytes arrive (or EOF: :class:`Closed`), at most until ``deadline``; the
        queued replies go out first (the client may be waiting for them)."""
        self._send()
        if self._eof:
            raise Closed()
        waiter = self._waiter = self.loop.create_future()
        timer = None if deadline is None else self.loop.call_at(deadline, self._expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- TLS --------------------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Send the queued replies (the ``220``), then the handshake; what the client sent
        in clear text after STARTTLS is discarded."""
        await self.flush(timeout)
        self.discard_input()
        assert self.transport is not None
        transport = await self.loop.start_tls(self.transport, self, context, server_side=True,
                                              ssl_handshake_timeout=timeout)
        if transport is None:
            raise Closed()
        self.transport = transport
