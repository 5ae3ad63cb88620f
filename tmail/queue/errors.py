"""What the queue raises when it refuses or fails to store a message."""

from __future__ import annotations


class QueueWriteError(OSError):
    """The queue could not store a message; nothing of it is visible.

    An ``OSError`` that keeps the cause's ``errno``: the SMTP receiver answers ``452 4.3.1``
    for a full disk or quota (``ENOSPC``, ``EDQUOT``) and ``451 4.3.0`` for anything else.
    """


class EnvelopeError(ValueError):
    """An envelope the queue cannot store as given (no recipient, an address that is not
    valid UTF-8 or holds a control character): refused for that one message, before any
    file of it is written."""
