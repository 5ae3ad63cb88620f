"""Who may send to whom: local recipients (through the directory), relaying, and never an
open relay. The decision order itself is :mod:`tmail.directory.expansion`'s."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from smtp_receiver.limits import in_networks
from tmail.address import Address
from tmail.config import Config
from tmail.db import DatabaseUnavailable
from tmail.directory.expansion import ExpansionError, expand
from tmail.directory.lookup import Directory
from tmail.queue import Target

log = logging.getLogger("smtp_receiver")


@dataclass(frozen=True)
class Refusal:
    code: int
    text: str
    reason: str  # the metrics class: unknown_user, alias_loop, relay_denied, lookup_failure

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @classmethod
    def from_reply(cls, reply: str, reason: str) -> Refusal:
        code, _, text = reply.partition(" ")
        return cls(int(code), text, reason)


class RecipientPolicy:
    """Decides each RCPT TO at once, so that we never accept what we would have to bounce.

    Local domains, relay domains and relay networks come from the directory (re-read as soon
    as any process on any node changed it: :mod:`tmail.directory.lookup`).
    """

    def __init__(self, config: Config, directory: Directory) -> None:
        self._config = config
        self._directory = directory
        self._postmaster = (Address.parse(config.postmaster, allow_utf8=True)
                            if config.postmaster else None)

    def check(self, rcpt: Address, given: str, client_ip: str,
              relay_user: bool) -> list[Target] | Refusal:
        """The targets ``rcpt`` (as the client gave it: ``given``) is queued for, or the
        refusal. Blocking (database queries): call it from a worker thread. A database that
        cannot answer gets the sender's retry (Postfix's words for a map that fails), never a
        5xx that would bounce mail for a real user."""
        try:
            with self._directory.reading() as reader:
                if reader.is_local(rcpt):
                    try:
                        return expand(rcpt, reader, self._postmaster, given=given)
                    except ExpansionError as exc:
                        return Refusal.from_reply(exc.reply, exc.reason)
                if relay_user or reader.in_relay_networks(client_ip) or (
                        reader.is_relay_domain(rcpt)):
                    return [Target(given, given)]
        except DatabaseUnavailable as exc:
            log.warning("RCPT <%s>: %s", rcpt, exc)
            return Refusal(451, f"4.3.0 <{rcpt}>: Temporary lookup failure", "lookup_failure")
        return Refusal(554, f"5.7.1 <{rcpt}>: Relay access denied", "relay_denied")

    def in_relay_networks(self, client_ip: str) -> bool:
        """``TMAIL_RELAY_NETWORKS`` only: asked at connect, on the event loop, where no
        database look-up may run (the stored networks count at RCPT)."""
        return in_networks(client_ip, self._config.relay_networks)
