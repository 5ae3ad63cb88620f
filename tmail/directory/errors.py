"""What the directory stores refuse, as the API (and the CLI) answer it."""

from __future__ import annotations


class DirectoryError(Exception):
    """A refused directory change: ``msg`` says what, ``raw`` why; ``status`` is the HTTP
    status the API answers with (the CLI exits non-zero with the same words)."""

    status = 422
    msg = "invalid input"

    def __init__(self, raw: str, msg: str | None = None) -> None:
        super().__init__(raw)
        self.raw = raw
        if msg is not None:
            self.msg = msg


class InvalidEntry(DirectoryError):
    """A value no entry may have (a bad domain, CIDR or command): 422."""


class Conflict(DirectoryError):
    """The entry exists already, or others still use it: 409."""

    status = 409
