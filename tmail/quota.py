"""Mailbox quotas as tmail writes them: plain bytes or a K/M/G suffix ("1G" is 1 GiB)."""

from __future__ import annotations

import re

_QUOTA = re.compile(r"^\s*(\d+)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_quota(text: str) -> int | None:
    """Return the quota in bytes, or ``None`` for "no quota" (the empty string).

    Raises ``ValueError`` with a readable reason for anything else.
    """
    if text.strip() == "":
        return None
    match = _QUOTA.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 1G, 500M, 10240K or 1048576")
    number, unit = match.groups()
    return int(number) * _UNITS[unit.upper()]
