"""The ``Received:`` trace header (RFC 5321 §4.4) with RFC 3848's protocol keywords."""

from __future__ import annotations

import email.utils

from tmail.text import printable


def protocol(extended: bool, tls: bool, authenticated: bool) -> str:
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(*, helo: str, client_ip: str, hostname: str, with_protocol: str,
                    rcpt: str | None) -> str:
    """The header's value, folded like Postfix's. The values were checked at HELO and RCPT;
    still, nothing from the client may ever add a line to a header we write."""
    helo, client_ip = printable(helo), printable(client_ip)
    rcpt = printable(rcpt) if rcpt else None
    value = (f"from {helo or 'unknown'} ([{client_ip}])\r\n"
             f"\tby {hostname} (tmail) with {with_protocol}")
    if rcpt:
        value += f"\r\n\tfor <{rcpt}>"
    return value + f"; {email.utils.formatdate(localtime=True)}"
