"""What a client says about itself and its addresses, checked before anything is kept.

Every value checked here ends up in a header we write (``Received: from <helo>``, ``for
<rcpt>``), in a queue record or in a log line, so none may carry a CR, an LF, a control
character or bytes that are not UTF-8.
"""

from __future__ import annotations

import re
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

from tmail.address import MAX_LOCAL_PART, Address, AddressError, parse_domain

# RFC 1123 host names, one label allowed (Windows clients say "EHLO DESKTOP-1A2B3C"), with
# the underscore Postfix's valid_hostname() tolerates too.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def valid_helo(argument: str) -> bool:
    """A host name or an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``)."""
    if argument.startswith("["):
        try:
            parse_domain(argument)
        except AddressError:
            return False
        return True
    return len(argument) <= 255 and _HOSTNAME.fullmatch(argument) is not None


# AddressError.reason -> (reply for MAIL FROM, reply for RCPT TO); RFC 3463's X.1.7 is the
# sender's mailbox, X.1.3 the recipient's; RFC 6531 §3.5 gives 5.6.7 for a non-ASCII
# address where SMTPUTF8 was not negotiated.
_REFUSALS = {
    "syntax": ("501 5.1.7 Bad sender address syntax", "501 5.1.3 Bad recipient address syntax"),
    "encoding": ("553 5.1.7 Sender address is not valid UTF-8",
                 "553 5.1.3 Recipient address is not valid UTF-8"),
    "non_ascii": ("553 5.6.7 Non-ASCII sender address requires SMTPUTF8",
                  "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8"),
}


def parse_address(text: str, *, smtputf8: bool, sender: bool) -> Address | str:
    """The address, or the reply that refuses it."""
    try:
        return Address.parse(text, allow_utf8=smtputf8)
    except AddressError as exc:
        replies = _REFUSALS.get(exc.reason, _REFUSALS["syntax"])
        return replies[0] if sender else replies[1]



# The common case of MAIL FROM/RCPT TO: <dot-atom@domain> then parameters. The email
# package's RFC 5322 parser (below) was a tenth of the receiver's CPU under load; this match
# gives the same answer for these paths, the rest still goes through the full parser.
_SIMPLE_PATH = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)",
    re.DOTALL,
)


def split_path(arg: str) -> tuple[str | None, str]:
    """The address of ``<path> params`` and the parameters; ``"<>"`` for the null path,
    ``""`` for none, ``None`` when it does not parse (``501 5.1.3``). As lenient as Postfix
    (and aiosmtpd before us): a path without angle brackets or with a comment is read by
    the email package's parser; the address itself is checked by :func:`parse_address`."""
    stripped = arg.lstrip()
    if stripped.startswith("<>"):
        return "<>", stripped[2:].lstrip()
    match = _SIMPLE_PATH.fullmatch(stripped)
    if match is not None and not match.group(2).lstrip().startswith("("):
        address, rest = match.groups()
        return (None, "") if len(address.rpartition("@")[0]) > MAX_LOCAL_PART else (
            address, rest.lstrip())
    if not stripped:
        return "", ""
    try:
        if stripped.startswith("<"):
            token, rest = get_angle_addr(stripped)
        else:
            token, rest = get_addr_spec(stripped)
    except HeaderParseError:
        return None, ""
    address = token.addr_spec
    if len(address.rpartition("@")[0]) > MAX_LOCAL_PART:
        return None, ""
    return address, rest.lstrip()


def split_params(text: str) -> dict[str, str | bool] | None:
    """``KEY=VALUE`` and ``KEY`` parameters (RFC 5321 esmtp-param), upper-cased; ``None``
    when one is malformed."""
    found: dict[str, str | bool] = {}
    for param in text.upper().split():
        key, equals, value = param.partition("=")
        if not key.isalnum() or (equals and not value):
            return None
        found[key] = value if equals else True
    return found
