"""The one parser of mail addresses: every layer passes :class:`Address` values around.

An address arrives from hostile places (an SMTP command decoded with ``surrogateescape``, a
JSON body, a command line). It is checked once here, against RFC 5321's ``Mailbox`` syntax
(a dot-atom or quoted local part, a domain or an address literal) and its length limits, so
that nothing downstream (a JSON record, a header we write, a path under the mailboxes
directory) ever sees invalid UTF-8, a control character or a CR/LF. The domain is kept in
lower case and in its IDNA A-label form for DNS and for comparisons.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

MAX_LOCAL_PART = 64  # octets, RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # octets, RFC 5321 §4.5.3.1.2
MAX_PATH = 254  # octets of local@domain (the 256-octet path less its angle brackets)

# RFC 5321 atext, plus any non-ASCII character (RFC 6531 §3.3) when it is allowed at all.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
# qtextSMTP and quoted-pairSMTP: printable characters, no CR, LF or NUL.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IDNA_MAX = 253  # what idna.encode accepts of a name without its final dot


class AddressError(ValueError):
    """An address tmail refuses; ``reason`` is ``syntax``, ``encoding`` or ``non_ascii``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Address:
    """``local@domain``: the local part as given (its case matters to its owner), the domain
    in lower case (Unicode form) and ``ascii_domain`` in A-label form."""

    local: str
    domain: str
    ascii_domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()

    @property
    def key(self) -> str:
        """The case-insensitive lookup key: the whole address in lower case."""
        return f"{self.local.lower()}@{self.ascii_domain}"

    @classmethod
    def parse(cls, text: str, *, allow_utf8: bool = False) -> Address:
        """Check ``text`` (without angle brackets) and return it as an :class:`Address`.

        ``allow_utf8`` is true only where the whole path supports internationalised
        addresses (an SMTP session that negotiated SMTPUTF8); elsewhere a non-ASCII address
        is refused with reason ``non_ascii``, which SMTP answers with ``553 5.6.7``.
        """
        try:
            octets = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
            raise AddressError("encoding", "address is not valid UTF-8") from None
        if not text.isascii() and not allow_utf8:
            raise AddressError("non_ascii", "non-ASCII address without SMTPUTF8")
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain:
            raise AddressError("syntax", "address must be local-part@domain")
        if octets > MAX_PATH or len(local.encode("utf-8")) > MAX_LOCAL_PART:
            raise AddressError("syntax", "address too long")
        if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
            raise AddressError("syntax", "bad local part")
        unicode_domain, ascii_domain = parse_domain(domain)
        return cls(local, unicode_domain, ascii_domain)


def parse_domain(text: str) -> tuple[str, str]:
    """``(unicode_form, ascii_form)`` of a domain or an address literal, both lower case.

    A domain needs at least two labels (``localhost`` alone is no mail domain here), each
    LDH after IDNA encoding (UTS #46 mapping, as mail clients apply it).
    """
    if text.startswith("[") and text.endswith("]"):
        literal = text[1:-1]
        value = literal[5:] if literal[:5].lower() == "ipv6:" else literal
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise AddressError("syntax", "bad address literal") from None
        if (ip.version == 6) != (value is not literal):
            raise AddressError("syntax", "bad address literal")
        form = f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"
        return form, form
    name = text.rstrip(".") if text.endswith(".") and not text.endswith("..") else text
    if name.isascii() and len(name) <= _IDNA_MAX:
        # An LDH name without A-labels (nearly every address an MX sees): what UTS #46 and
        # IDNA 2008 make of it is its lower case. idna.encode costs 40 us per domain, twice
        # per message in the receiver; anything else (an A-label "xn--", a bad label) still
        # goes through it, so the answer is the same either way (tests/test_address.py).
        lower = name.lower()
        labels = lower.split(".")
        if len(labels) >= 2 and all(_LABEL.fullmatch(label) and label[2:4] != "--"
                                    for label in labels):
            return lower, lower
    try:
        ascii_form = idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise AddressError("syntax", "bad domain") from None
    labels = ascii_form.split(".")
    if len(labels) < 2 or len(ascii_form) > MAX_DOMAIN or not all(
            _LABEL.fullmatch(label) for label in labels):
        raise AddressError("syntax", "bad domain")
    unicode_form = name.lower() if name.isascii() else idna.decode(ascii_form)
    return unicode_form, ascii_form


def domain_of(address: str) -> str:
    """The lower-cased domain of an address that was already parsed once (a stored one)."""
    return address.rpartition("@")[2].lower() if "@" in address else ""
