"""Group commit: messages that arrive together share one round of fsyncs.

Each SMTP session awaits :meth:`GroupCommitter.submit` and is answered only once its own
message is durable. While one batch is being written (in a worker thread, off the event
loop), the messages of other sessions pile up and become the next batch, so under load the
cost of the fsyncs is spread over every message that arrived in those few milliseconds.

Each message keeps its own outcome: one that cannot be stored fails its own session only.
And the work in hand is bounded: beyond ``max_pending`` messages submitted and not yet
written, :meth:`submit` waits for room, so a flood slows clients down instead of growing
the receiver's memory without end.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from tmail.queue import Envelope, QueueStore, Record

Outcome = list[Record] | Exception

log = logging.getLogger("smtp_receiver")

MAX_BATCH = 128
MAX_PENDING = 2 * MAX_BATCH  # one batch being written, one filling up


class GroupCommitter:
    def __init__(self, store: QueueStore, max_batch: int = MAX_BATCH,
                 max_pending: int = MAX_PENDING) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_pending ({max_pending}) "
                             "must be at least 1")
        store.create_message_dirs()  # once per queue: no commit then pays for a mkdir
        self._store = store
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[tuple[Envelope, asyncio.Future[list[Record]]]] = []
        self._in_hand = 0  # submitted and not answered yet: waiting or being written
        self._room: asyncio.Condition | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-commit")
        self._flusher: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Messages submitted and not yet answered (at most ``max_pending``)."""
        return self._in_hand

    async def submit(self, envelope: Envelope) -> list[Record]:
        """Queue ``envelope``; returns its records once durable, or raises this message's own
        error: :class:`QueueWriteError` (errno kept) when it could not be written, the
        original exception (e.g. :class:`EnvelopeError`) for anything else.

        Waits first while ``max_pending`` messages are in hand. A ``raw`` spool is consumed
        once the message is in hand, whatever the outcome (also if the caller is cancelled).
        """
        room = self._condition()
        async with room:
            await room.wait_for(lambda: self._in_hand < self._max_pending)
            self._in_hand += 1
        future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        # A session that went away before its answer must not leave "exception never
        # retrieved" noise in the log: its outcome is read here in any case.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._pending.append((envelope, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    def _condition(self) -> asyncio.Condition:
        if self._room is None:  # created in the event loop that uses it
            self._room = asyncio.Condition()
        return self._room

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: len(batch)]
                written: asyncio.Future[list[Outcome]] = loop.create_future()
                self._executor.submit(self._write, [envelope for envelope, _ in batch],
                                      loop, written)
                for (_, future), outcome in zip(batch, await written, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                await self._release(len(batch))
        finally:
            self._flusher = None

    def _write(self, envelopes: list[Envelope], loop: asyncio.AbstractEventLoop,
               written: asyncio.Future[list[Outcome]]) -> None:
        """In the commit thread: the batch, its outcomes handed to the event loop, then,
        when no other message waits, the next messages' files made ahead (spares.py), off
        the path between a final dot and its 250."""
        results: list[Outcome] | None = None
        try:
            results = self._store.enqueue_many(envelopes)
        except Exception as exc:  # a bug in the store: no session may hang on it
            results = [exc] * len(envelopes)
        finally:  # even a BaseException (this job's future is never read) answers them
            if results is None:
                results = [RuntimeError("enqueue interrupted")] * len(envelopes)
            loop.call_soon_threadsafe(_resolve, written, results)
        if not self._pending:  # read from this thread: a hint, a late message only waits
            try:
                self._store.prepare_files()
            except Exception:  # a bug there must not stop the commits
                log.exception("cannot make files ahead in the queue")

    async def _release(self, count: int) -> None:
        room = self._condition()
        async with room:
            self._in_hand -= count
            room.notify(count)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._store.release_files()


def _resolve(written: asyncio.Future[list[Outcome]], results: list[Outcome]) -> None:
    if not written.done():  # the flusher may have been cancelled at shut-down
        written.set_result(results)
