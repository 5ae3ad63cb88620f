"""The on-disk queue: files plus JSON metadata in a hashed tree (docs/queue-format.md)."""

from tmail.queue.filters import RecordFilter
from tmail.queue.record import Record, RecordError, Status
from tmail.queue.store import Envelope, LockedRecord, QueueStore, QueueWriteError

__all__ = [
    "Envelope",
    "LockedRecord",
    "QueueStore",
    "QueueWriteError",
    "Record",
    "RecordError",
    "RecordFilter",
    "Status",
]
