"""DKIM checks for the tests: dkimpy's own verifier, with DNS answered from the records the
API (or the key store) says to publish, never from the network."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dkim


def txt_strings(value: str) -> bytes:
    """What a resolver returns for a published ``DnsValue``: its strings joined."""
    if value.startswith('"'):
        return "".join(part.strip('"') for part in value.split('" "')).encode()
    return value.encode()


def dns_from(records: Iterable[tuple[str, str]]) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc`` over ``(DnsName, DnsValue)`` pairs."""
    published = {name.lower(): txt_strings(value) for name, value in records}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return published.get(name.decode().rstrip(".").lower())

    return dnsfunc


def verifies(message: bytes, records: Iterable[tuple[str, str]]) -> bool:
    return bool(dkim.verify(message, dnsfunc=dns_from(records)))


def signature_tags(message: bytes) -> dict[str, str]:
    """The tags of the topmost DKIM-Signature (empty when there is none)."""
    headers = message.split(b"\r\n\r\n", 1)[0].decode()
    if not headers.startswith("DKIM-Signature:"):
        return {}
    lines = headers.split("\r\n")
    value = lines[0].partition(":")[2]
    for line in lines[1:]:
        if line[:1] not in (" ", "\t"):
            break
        value += line
    tags = (tag.strip().partition("=") for tag in value.split(";") if tag.strip())
    return {name.strip(): "".join(text.split()) for name, _, text in tags}
