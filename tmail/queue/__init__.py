"""The on-disk queue: files plus JSON metadata in a hashed tree (docs/queue-format.md)."""

from tmail.queue.changes import LockedRecord
from tmail.queue.claims import Claim
from tmail.queue.enqueue import Envelope, Target
from tmail.queue.errors import EnvelopeError, QueueWriteError
from tmail.queue.filters import RecordFilter
from tmail.queue.record import Record, RecordError, Status
from tmail.queue.spool import Spool
from tmail.queue.store import QueueStore

__all__ = [
    "Claim",
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
    "Target",
]
