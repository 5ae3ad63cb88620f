"""The one address parser: what it accepts, what it refuses and why."""

from __future__ import annotations

import re

import idna
import pytest

from tmail.address import Address, AddressError, domain_of, parse_domain


@pytest.mark.parametrize(
    ("text", "local", "domain", "ascii_domain"),
    [
        ("test@tmail.io", "test", "tmail.io", "tmail.io"),
        ("Bob@Example.ORG", "Bob", "example.org", "example.org"),
        ('"a b"@x.org', '"a b"', "x.org", "x.org"),
        ("a@[127.0.0.1]", "a", "[127.0.0.1]", "[127.0.0.1]"),
        ("a@[IPv6:0::1]", "a", "[IPv6:::1]", "[IPv6:::1]"),
        ("a@x.org.", "a", "x.org", "x.org"),
    ],
)
def test_accepts_rfc5321_mailboxes(text: str, local: str, domain: str, ascii_domain: str) -> None:
    address = Address.parse(text)
    assert (address.local, address.domain, address.ascii_domain) == (local, domain, ascii_domain)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\udcff@x.org", "encoding"),  # what aiosmtpd's surrogateescape makes of byte 0xff
        ("x@", "syntax"),
        ("@x.org", "syntax"),
        ("a..b@x.org", "syntax"),
        ("../../../tmp/x@x.org", "syntax"),
        ("a\r\n@x.org", "syntax"),
        ("a@localhost", "syntax"),
        ("a@[::1]", "syntax"),
        ("a@b..c", "syntax"),
        ("a@x_y.org", "syntax"),
        ("a" * 65 + "@x.org", "syntax"),
        ("a@" + "b" * 64 + ".org", "syntax"),
        ("δοκιμή@παράδειγμα.δοκιμή", "non_ascii"),
    ],
)
def test_refuses_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as caught:
        Address.parse(text)
    assert caught.value.reason == reason


def test_internationalised_address_only_when_allowed() -> None:
    address = Address.parse("δοκιμή@Παράδειγμα.δοκιμή", allow_utf8=True)
    assert address.domain == "παράδειγμα.δοκιμή"
    assert address.ascii_domain == "xn--hxajbheg2az3al.xn--jxalpdlp"
    assert not address.is_ascii
    assert address.key == "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"


def test_domain_of_a_stored_address() -> None:
    assert domain_of("Bob@Example.ORG") == "example.org"
    assert domain_of("no-at-sign") == ""


def through_idna(name: str) -> tuple[str, str] | None:
    """parse_domain's answer by the idna package alone (what it did for every domain)."""
    try:
        ascii_form = idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    labels = ascii_form.split(".")
    if len(labels) < 2 or len(ascii_form) > 255 or not all(
            re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels):
        return None
    return (name.lower() if name.isascii() else idna.decode(ascii_form)), ascii_form


@pytest.mark.parametrize("name", [
    "example.org", "EXAMPLE.Org", "a.b", "mx-1.example.org", "1.2.3.4", "0.example",
    "ab--cd.example", "xn--bcher-kva.example", "XN--BCHER-KVA.example", "xn--zz.example",
    "xn--.example", "-a.example", "a-.example", "a..example", ".example", "example",
    "a_b.example", "a b.example", "a" * 63 + ".example", "a" * 64 + ".example",
    ".".join(["a" * 49] * 5) + ".ex", ".".join(["a" * 49] * 5) + ".exa", "bücher.example",
    "faß.example", "example.org.", "example.org..",
])
def test_a_domain_gets_the_answer_idna_gives(name: str) -> None:
    """The ASCII fast path of parse_domain answers as the idna package does."""
    expected = through_idna(name.rstrip(".") if name.endswith(".") and not name.endswith("..")
                            else name)
    try:
        assert parse_domain(name) == expected
    except AddressError:
        assert expected is None
