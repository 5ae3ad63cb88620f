"""Untrusted text made safe for one log line or one header field.

Remote replies, SMTP arguments, logins and addresses come from outside. Shown as they are,
a CR or LF would start a line of its own (a forged log line, an injected DSN field) and a
lone surrogate (what ``surrogateescape`` makes of bytes that are not UTF-8) would make the
log handler fail. Every such character is shown as ``?``, as Postfix logs untrusted text.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and lone surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every control character and lone surrogate shown as ``?``."""
    return _UNPRINTABLE.sub("?", text)
