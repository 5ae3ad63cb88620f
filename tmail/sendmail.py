"""Local submission, like Postfix's ``sendmail`` command: a message from a local program or a
cron job goes straight into the queue, with a ``Received:`` line that says so."""

from __future__ import annotations

import email.utils
import getpass
import os
from collections.abc import Callable, Sequence

from tmail.message import (
    format_date,
    has_header,
    new_message_id,
    parse_headers,
    prepend_header,
    split_headers,
)
from tmail.queue import QueueStore, Record, Target


class SendmailError(ValueError):
    """Nothing to send (no recipients); the command answers EX_USAGE."""


def to_crlf(raw: bytes) -> bytes:
    """What SMTP would have given the queue: CRLF line endings throughout."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def qualify(address: str, hostname: str) -> str:
    return address if "@" in address else f"{address}@{hostname}"


def header_recipients(raw: bytes) -> list[str]:
    headers = parse_headers(raw)
    fields = [value for name in ("To", "Cc", "Bcc") for value in headers.get_all(name, [])]
    return [address for _, address in email.utils.getaddresses(fields) if address]


def drop_bcc(raw: bytes) -> bytes:
    headers, body = split_headers(raw)
    kept: list[bytes] = []
    skipping = False
    for line in headers.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"".join(kept) + body


def submit(
    store: QueueStore,
    raw: bytes,
    *,
    recipients: Sequence[str],
    sender: str | None,
    from_headers: bool,
    hostname: str,
    caller_uid: int | None = None,
    caller_login: str | None = None,
    resolve: Callable[[str], Sequence[Target]] | None = None,
) -> list[Record]:
    """Queue ``raw`` from a local program; returns its records.

    ``caller_uid``/``caller_login`` name who ran the command when this process has since
    switched to the queue's owner (default: this process's own identity). ``resolve``
    expands each recipient through the directory's aliases
    (:meth:`tmail.directory.lookup.Directory.resolve`), as the SMTP receiver does.
    """
    uid = os.getuid() if caller_uid is None else caller_uid
    login = getpass.getuser() if caller_login is None else caller_login
    raw = to_crlf(raw)
    rcpts = list(recipients)
    if from_headers:
        rcpts += header_recipients(raw)
        raw = drop_bcc(raw)
    rcpts = [qualify(r, hostname) for r in dict.fromkeys(rcpts)]
    if not rcpts:
        raise SendmailError("no recipients given (use -t or name them)")
    envelope_from = qualify(sender if sender is not None else login, hostname) if (
        sender != "") else ""
    if not has_header(raw, "From") and envelope_from:
        raw = prepend_header(raw, "From", envelope_from)
    if not has_header(raw, "Date"):
        raw = prepend_header(raw, "Date", format_date())
    if not has_header(raw, "Message-ID"):
        raw = prepend_header(raw, "Message-ID", new_message_id(hostname))
    raw = prepend_header(
        raw,
        "Received",
        f"by {hostname} (tmail, from local program uid {uid});\r\n\t{format_date()}",
    )
    targets: list[str | Target] = list(rcpts)
    if resolve is not None:
        found: dict[tuple[str, str], Target] = {}
        for rcpt in rcpts:
            for target in resolve(rcpt):
                found.setdefault((target.rcpt_to.lower(), target.pipe), target)
        targets = list(found.values())
    return store.enqueue(raw, envelope_from, targets, client_addr="local")
