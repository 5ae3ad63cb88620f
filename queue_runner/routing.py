"""Where mail for a domain goes: the routes (the directory's and TMAIL_ROUTES) first, else
MX records (RFC 5321 §5).

DNS sits behind :class:`Resolver` so that tests give a stub and never ask the internet.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.resolver

from tmail.address import AddressError, parse_domain
from tmail.config import HostPort
from tmail.routes import Route, failover_order, matching
from tmail.users import login_key


class RoutingError(Exception):
    """No destination; ``permanent`` says whether to bounce or to retry later."""

    def __init__(self, status: str, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.status, self.text, self.permanent = status, text, permanent


class NoSuchDomain(Exception):
    pass


class NoRecords(Exception):
    pass


class Resolver(Protocol):
    def mx(self, domain: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs; raises NoSuchDomain, NoRecords or DNS errors."""
        ...


class DnsResolver:
    def __init__(self, timeout: float = 10.0) -> None:
        self._resolver = dns.resolver.Resolver()
        self._resolver.lifetime = timeout

    def mx(self, domain: str) -> list[tuple[int, str]]:
        try:
            answer = self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise NoSuchDomain(domain) from exc
        except dns.resolver.NoAnswer as exc:
            raise NoRecords(domain) from exc
        return [(rr.preference, rr.exchange.to_text().rstrip(".")) for rr in answer]


# One generator for every attempt: a new random.Random() per attempt seeds itself from
# os.urandom (a system call and 2.5 KB of seeding each time) for two shuffles.
_RNG = random.Random()

RouteSource = Callable[[], Sequence[Route]]
"""The routes in force now: called once per delivery pass (``passes.py``), so that a route
added or removed through the API or the CLI applies to the next pass without restarting the
runner."""


@dataclass(frozen=True)
class Hop:
    """One server to try: its address and, for a route, the route (STARTTLS policy, AUTH
    credentials). Sessions are cached per hop, so that a session authenticated for one
    route never carries another route's mail."""

    address: HostPort
    route: Route | None = None

    def __str__(self) -> str:
        return str(self.address)


@dataclass(frozen=True)
class Destination:
    hops: tuple[Hop, ...]
    routed: bool


def destination(domain: str, routes: Sequence[Route], resolver: Resolver, *,
                sender: str = "", auth_user: str = "",
                rng: random.Random | None = None) -> Destination:
    """The hops to try in order for mail to ``domain``: the most specific matching routes
    by priority (equal ones shuffled), else the MX records by preference (equal ones
    shuffled, RFC 5321 §5.1)."""
    rng = rng or _RNG
    chosen = matching(routes, _ascii(domain), _key(sender), _key(auth_user))
    if chosen:
        return Destination(tuple(Hop(HostPort(r.remote_host, r.remote_port), r)
                                 for r in failover_order(chosen, rng)), routed=True)
    try:
        records = resolver.mx(domain)
    except NoSuchDomain:
        raise RoutingError("5.1.2", f"Host or domain name not found: {domain}", True) from None
    except NoRecords:
        return Destination((Hop(HostPort(domain, 25)),), routed=False)  # implicit MX
    except dns.exception.DNSException as exc:
        raise RoutingError("4.4.3", f"DNS lookup failure for {domain}: {exc}", False) from None
    exchanges = [(preference, rng.random(), host) for preference, host in records
                 if host not in ("", ".")]
    if not exchanges:
        raise RoutingError("5.1.10", f"Domain {domain} does not accept mail (null MX)", True)
    return Destination(tuple(Hop(HostPort(host, 25)) for *_, host in sorted(exchanges)),
                       routed=False)


# Pure functions of their text (IDNA, lower case) that every attempt would compute again
# for the same few domains and senders: 10 % of the runner's CPU per record without a cache.
@functools.lru_cache(maxsize=4096)
def _ascii(domain: str) -> str:
    try:
        return parse_domain(domain)[1]
    except AddressError:
        return domain.lower()


@functools.lru_cache(maxsize=4096)
def _key(address: str) -> str:
    """The routes' key of a sender or an authenticated user; ``""`` for none."""
    return login_key(address) if address else ""
