"""Who may send to whom: local recipients, relaying, and never an open relay."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from tmail.config import Config
from tmail.users import UserStore


@dataclass(frozen=True)
class Refusal:
    code: int
    text: str
    reason: str  # the class counted in the metrics: unknown_user, relay_denied

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RecipientPolicy:
    """Decides each RCPT TO at once, so that we never accept what we would have to bounce."""

    def __init__(self, config: Config, users: UserStore, cache_seconds: float = 2.0) -> None:
        self._config = config
        self._users = users
        self._cache_seconds = cache_seconds
        self._domains: set[str] = set()
        self._domains_at = float("-inf")

    def local_domains(self) -> set[str]:
        """Users' mailbox domains plus TMAIL_LOCAL_DOMAINS, re-read every few seconds."""
        now = time.monotonic()
        if now - self._domains_at > self._cache_seconds:
            self._domains = self._users.local_domains() | set(self._config.local_domains)
            self._domains_at = now
        return self._domains

    def check(self, rcpt: str, client_ip: str, relay_user: bool) -> Refusal | None:
        domain = rcpt.rpartition("@")[2].lower()
        if domain in self.local_domains():
            if self._users.find_mailbox(rcpt) is None:
                return Refusal(550, f"5.1.1 <{rcpt}>: Recipient address rejected: "
                                    "User unknown in local recipient table", "unknown_user")
            return None
        if relay_user or self._in_relay_networks(client_ip):
            return None
        return Refusal(554, f"5.7.1 <{rcpt}>: Relay access denied", "relay_denied")

    def _in_relay_networks(self, client_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self._config.relay_networks)
