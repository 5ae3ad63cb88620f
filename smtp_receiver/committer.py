"""Group commit: messages that arrive together share one round of fsyncs.

Each SMTP session awaits :meth:`GroupCommitter.submit` and is answered only once its own
message is durable. While one batch is being written (in a worker thread, off the event
loop), the messages of other sessions pile up and become the next batch, so under load the
cost of the fsyncs is spread over every message that arrived in those few milliseconds.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from tmail.queue import Envelope, QueueStore, Record


class GroupCommitter:
    def __init__(self, store: QueueStore, max_batch: int = 128) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[Envelope, asyncio.Future[list[Record]]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-commit")
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, envelope: Envelope) -> list[Record]:
        """Queue ``envelope``; returns its records once durable, or raises the write error."""
        future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        self._pending.append((envelope, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: len(batch)]
                envelopes = [envelope for envelope, _ in batch]
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._store.enqueue_many, envelopes
                    )
                except Exception as exc:  # every session of the batch answers 451
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), outcome in zip(batch, results, strict=True):
                        if future.done():
                            continue
                        if isinstance(outcome, Exception):
                            future.set_exception(outcome)
                        else:
                            future.set_result(outcome)
        finally:
            self._flusher = None

    def close(self) -> None:
        self._executor.shutdown(wait=True)
