"""The one address parser: what it accepts, what it refuses and why."""

from __future__ import annotations

import pytest

from tmail.address import Address, AddressError, domain_of


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
