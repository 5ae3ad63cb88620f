"""RFC 3464 delivery status notifications: bounces ("failed") and delay warnings ("delayed").

The API (bounce by the administrator) and the runner (permanent failures, expiry, delay
warnings) both build their DSNs here. The report follows what Postfix sends: a human-readable
part, the ``message/delivery-status`` part, and the original headers as
``text/rfc822-headers``. The DSN itself is sent from the null sender so that it can never
cause another bounce.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP, SMTPUTF8

from tmail.message import split_headers
from tmail.text import printable


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's line in the report."""

    rcpt_to: str
    action: str  # "failed" or "delayed"
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str = ""  # e.g. "smtp; 550 5.1.1 no such user"
    remote_mta: str = ""  # e.g. "dns; mx.example.org"
    will_retry_until: datetime | None = None
    original_rcpt: str = ""  # the ORCPT the client gave, if any (RFC 3461)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def text_lines(text: str) -> list[str]:
    """The lines of untrusted text (any of CRLF, CR, LF ends one), each printable, empty
    ones dropped; at least one (maybe empty) line."""
    lines = [printable(line).strip() for line in _LINE_BREAK.split(text)]
    return [line for line in lines if line] or [""]


def field_value(text: str) -> str:
    """A DSN field value from text that may come from outside (a remote server's reply):
    its lines folded (RFC 3464 §2.3.6, RFC 5322 §2.2.3), so that none can start a field."""
    return "\n ".join(text_lines(text))


def address_field(address: str) -> str:
    """``rfc822; addr``, or for a non-ASCII address RFC 6533's ``utf-8`` type in its ASCII
    (xtext) form, as ``message/delivery-status`` requires: ``\\x{HEX}`` for each non-ASCII
    character and for ``+``, ``=`` and ``\\``, which xtext reserves."""
    address = field_value(address)
    if address.isascii():
        return f"rfc822; {address}"
    encoded = "".join(
        f"\\x{{{ord(char):X}}}" if not char.isascii() or char in "+=\\" else char
        for char in address
    )
    return f"utf-8; {encoded}"


_INTRO = {
    "failed": (
        "Undelivered Mail Returned to Sender",
        "This is the mail system at host {host}.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "{reason}\n",
    ),
    "delayed": (
        "Delayed Mail (still being retried)",
        "This is the mail system at host {host}.\n\n"
        "####################################################################\n"
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
        "####################################################################\n\n"
        "Your message could not be delivered for {delay} hours.\n"
        "It will be retried until it is {lifetime} hours old.\n\n"
        "{reason}\n",
    ),
}


def build_dsn(
    *,
    original: bytes,
    mail_from: str,
    queue_id: str,
    arrival: datetime,
    recipients: Sequence[RecipientStatus],
    reporting_host: str,
    reason: str,
    delay_hours: float = 0.0,
    lifetime_hours: float = 0.0,
) -> bytes:
    """The complete DSN message (bytes, CRLF line endings) addressed to ``mail_from``."""
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    action = recipients[0].action
    subject, intro = _INTRO[action]
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_host}>"
    report["To"] = field_value(mail_from)
    report["Subject"] = subject
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_host)
    report["Auto-Submitted"] = "auto-replied"
    text = (
        intro.format(
            host=reporting_host,
            reason=reason,
            delay=f"{delay_hours:g}",
            lifetime=f"{lifetime_hours:g}",
        )
        + "\n".join(f"<{field_value(r.rcpt_to)}>: {field_value(r.diagnostic or r.status)}"
                    for r in recipients)
        + "\n"
    )
    report.attach(MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8"))
    report.attach(_delivery_status(queue_id, arrival, recipients, reporting_host))
    report.attach(_original_headers(original))
    # A non-ASCII sender can only be reached with SMTPUTF8: its To: goes as UTF-8 then.
    return report.as_bytes(policy=SMTP if mail_from.isascii() else SMTPUTF8)


def _delivery_status(
    queue_id: str,
    arrival: datetime,
    recipients: Sequence[RecipientStatus],
    reporting_host: str,
) -> Message:
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["X-Tmail-Queue-ID"] = queue_id
    per_message["Arrival-Date"] = email.utils.format_datetime(arrival)
    blocks = [per_message]
    for rcpt in recipients:
        block = Message()
        if rcpt.original_rcpt:
            block["Original-Recipient"] = address_field(rcpt.original_rcpt)
        block["Final-Recipient"] = address_field(rcpt.rcpt_to)
        block["Action"] = rcpt.action
        block["Status"] = rcpt.status
        if rcpt.remote_mta:
            block["Remote-MTA"] = _ascii_field(rcpt.remote_mta)
        if rcpt.diagnostic:
            block["Diagnostic-Code"] = _ascii_field(rcpt.diagnostic)
        if rcpt.will_retry_until is not None:
            block["Will-Retry-Until"] = email.utils.format_datetime(rcpt.will_retry_until)
        blocks.append(block)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(blocks)
    return status


def _ascii_field(text: str) -> str:
    """``message/delivery-status`` is ASCII (RFC 3464): a reply in UTF-8 (or the U+FFFD of
    undecodable bytes) gets ``?`` for what ASCII cannot show."""
    return field_value(text).encode("ascii", "replace").decode("ascii")


def _original_headers(original: bytes) -> Message:
    headers, _ = split_headers(original)
    part = MIMEBase("text", "rfc822-headers")
    text = headers.decode("utf-8", errors="replace").replace("\r\n", "\n")
    part.set_payload(text, charset="utf-8" if not text.isascii() else None)
    if text.isascii():
        part["Content-Transfer-Encoding"] = "7bit"
    return part
