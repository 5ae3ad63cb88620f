"""Who may send to whom: local recipients, relaying, and never an open relay."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from smtp_receiver.limits import in_networks
from tmail.address import Address
from tmail.config import Config
from tmail.db import DatabaseUnavailable
from tmail.users import UserStore

log = logging.getLogger("smtp_receiver")


@dataclass(frozen=True)
class Refusal:
    code: int
    text: str
    reason: str  # the class counted in the metrics: unknown_user, relay_denied, lookup_failure

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RecipientPolicy:
    """Decides each RCPT TO at once, so that we never accept what we would have to bounce."""

    def __init__(self, config: Config, users: UserStore) -> None:
        self._config = config
        self._users = users
        self._domains: frozenset[str] = frozenset()
        self._generation: int | None = None

    def local_domains(self) -> frozenset[str]:
        """Users' mailbox domains plus TMAIL_LOCAL_DOMAINS, re-read whenever the users table
        changed (in any process, on any node: ``UserStore.generation``, one primary-key
        read): a domain or a user created through the API or the CLI is local for the very
        next RCPT. (A cache by time used to refuse mail for a new domain with a permanent 554
        for two seconds.)"""
        generation = self._users.generation()
        if generation != self._generation:
            # Set the domains before the generation: a thread that sees the new generation
            # finds the new domains; two threads racing only make one more re-read.
            self._domains = frozenset(self._users.local_domains()
                                      | set(self._config.local_domains))
            self._generation = generation
        return self._domains

    def check(self, rcpt: Address, client_ip: str, relay_user: bool) -> Refusal | None:
        """``None`` to accept ``rcpt``. Blocking (a database query): call it from a worker
        thread. A database that cannot answer gets the sender's retry (Postfix's words for
        a map that fails), never a 5xx that would bounce mail for a real user."""
        try:
            domains = self.local_domains()
            local = rcpt.domain in domains or rcpt.ascii_domain in domains
            if local and self._users.find_mailbox(rcpt) is None:
                return Refusal(550, f"5.1.1 <{rcpt}>: Recipient address rejected: "
                                    "User unknown in local recipient table", "unknown_user")
        except DatabaseUnavailable as exc:
            log.warning("RCPT <%s>: %s", rcpt, exc)
            return Refusal(451, f"4.3.0 <{rcpt}>: Temporary lookup failure", "lookup_failure")
        if local:
            return None
        if relay_user or self.in_relay_networks(client_ip):
            return None
        return Refusal(554, f"5.7.1 <{rcpt}>: Relay access denied", "relay_denied")

    def in_relay_networks(self, client_ip: str) -> bool:
        return in_networks(client_ip, self._config.relay_networks)
