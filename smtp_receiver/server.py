"""The listening server: aiosmtpd's SMTP protocol with Postfix-like replies and STARTTLS."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl

from aiosmtpd.smtp import SMTP

from smtp_receiver.handler import ReceiverHandler
from tmail.config import Config

# aiosmtpd's own replies for checks it makes before our hooks, with enhanced status codes.
_REPLIES = {
    "553 5.1.3 Error: malformed address": "501 5.1.3 Bad address syntax",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed limit",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed limit",
}


# The common case of MAIL FROM/RCPT TO: <dot-atom@domain> then parameters. aiosmtpd parses
# every address with the email package's RFC 5322 parser, a tenth of the receiver's CPU
# under load; this match gives the same answer for these addresses, the rest still goes
# through the full parser.
_SIMPLE_ADDRESS = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)",
    re.DOTALL,
)


class TmailSMTP(SMTP):
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_ADDRESS.fullmatch(arg.lstrip())
        if match is None:
            return super()._getaddr(arg)
        address, rest = match.groups()
        rest = rest.lstrip()
        if rest.startswith("("):  # a comment: the full parser knows what to do with it
            return super()._getaddr(arg)
        local_part = address.rpartition("@")[0]
        if self.local_part_limit and len(local_part) > self.local_part_limit:
            return None, None
        return address, rest

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            if status.startswith("552") and isinstance(self.event_handler, ReceiverHandler):
                self.event_handler.refused("too_big")
            status = _REPLIES.get(status, status)
        await super().push(status)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(config: Config, handler: ReceiverHandler,
                context: ssl.SSLContext | None) -> asyncio.Server:
    """Listen on TMAIL_SMTP_BIND; SO_REUSEPORT lets several receiver processes share it."""

    def factory() -> SMTP:
        return TmailSMTP(
            handler,
            hostname=config.hostname,
            ident="tmail",
            data_size_limit=config.max_message_size,
            decode_data=False,
            enable_SMTPUTF8=True,
            tls_context=context,
            require_starttls=False,
            auth_require_tls=config.smtp_auth_require_tls,
            timeout=300,
        )

    loop = asyncio.get_running_loop()
    return await loop.create_server(
        factory,
        host=config.smtp_bind.host,
        port=config.smtp_bind.port,
        family=socket.AF_INET6 if ":" in config.smtp_bind.host else socket.AF_INET,
        reuse_port=True,
    )
