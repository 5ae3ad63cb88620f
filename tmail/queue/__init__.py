"""The on-disk queue: files plus JSON metadata in a hashed tree (docs/queue-format.md)."""

from tmail.queue.enqueue import Envelope
from tmail.queue.errors import EnvelopeError, QueueWriteError
from tmail.queue.filters import RecordFilter
from tmail.queue.record import Record, RecordError, Status
from tmail.queue.spool import Spool
from tmail.queue.store import LockedRecord, QueueStore

__all__ = [
    "Envelope",
    "EnvelopeError",
    "LockedRecord",
    "QueueStore",
    "QueueWriteError",
    "Record",
    "RecordError",
    "RecordFilter",
    "Spool",
    "Status",
]
