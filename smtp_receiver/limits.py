"""What one client may take from the receiver: sessions, and AUTH attempts over time.

Postfix keeps these counts in its ``anvil`` service; here each receiver process keeps its
own (with ``TMAIL_SMTP_PROCESSES`` workers the kernel spreads one client's connections over
them, so a client gets at most that many times the per-IP budget, still a fixed bound).
Both tables are bounded: a flood of distinct addresses cannot grow them without end.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(ip: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


@dataclass(frozen=True)
class Refusal:
    """Why a connection is turned away at once (the caller answers ``421 4.7.0``)."""

    text: str
    reason: str  # the metrics class


class SessionLimits:
    """Sessions in progress in this process, in total and per client IP.

    ``exempt(ip)`` says which clients the per-IP limit does not apply to (Postfix's
    ``smtpd_client_event_limit_exceptions = $mynetworks``); the total applies to all.
    """

    def __init__(self, max_total: int, max_per_ip: int,
                 exempt: Callable[[str], bool] = lambda ip: False) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._exempt = exempt
        self._per_ip: Counter[str] = Counter()
        self.total = 0

    def admit(self, ip: str) -> Refusal | None:
        """Count a new session, or say why it is refused (then nothing is counted)."""
        if self.total >= self.max_total:
            return Refusal("Error: too many connections", "too_many_sessions")
        if self._per_ip[ip] >= self.max_per_ip and not self._exempt(ip):
            return Refusal(f"Error: too many connections from {ip}", "too_many_sessions")
        self.total += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


class AuthFailures:
    """Failed AUTH attempts per client IP over a sliding window, across sessions.

    After ``limit`` failures within ``window`` seconds the address is refused AUTH (``454
    4.7.0``) until its oldest failure leaves the window: a password guesser that opens a new
    connection for every three tries gets nowhere, and a user who mistyped is let in again.
    """

    MAX_ADDRESSES = 10_000

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, ip: str) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def blocked(self, ip: str) -> bool:
        times = self._recent(ip)
        return times is not None and len(times) >= self.limit

    def record(self, ip: str) -> None:
        times = self._recent(ip)
        if times is None:
            times = self._failures[ip] = deque(maxlen=self.limit)
            if len(self._failures) > self.MAX_ADDRESSES:
                self._failures.popitem(last=False)  # the address seen least recently
        else:
            self._failures.move_to_end(ip)
        times.append(self._clock())
