"""Where mail for a domain goes: TMAIL_ROUTES first, else MX records (RFC 5321 §5).

DNS sits behind :class:`Resolver` so that tests give a stub and never ask the internet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.resolver

from tmail.config import Config, HostPort


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


@dataclass(frozen=True)
class Destination:
    hosts: tuple[HostPort, ...]
    routed: bool


def destination(domain: str, config: Config, resolver: Resolver) -> Destination:
    """The hosts to try in order for ``domain``."""
    route = config.route_for(domain)
    if route is not None:
        return Destination((route,), routed=True)
    try:
        records = resolver.mx(domain)
    except NoSuchDomain:
        raise RoutingError("5.1.2", f"Host or domain name not found: {domain}", True) from None
    except NoRecords:
        return Destination((HostPort(domain, 25),), routed=False)  # implicit MX: the A/AAAA
    except dns.exception.DNSException as exc:
        raise RoutingError("4.4.3", f"DNS lookup failure for {domain}: {exc}", False) from None
    if len(records) == 1 and records[0][1] in ("", "."):
        raise RoutingError("5.1.10", f"Domain {domain} does not accept mail (null MX)", True)
    hosts = tuple(HostPort(host, 25) for _, host in sorted(records) if host not in ("", "."))
    if not hosts:
        raise RoutingError("5.1.10", f"Domain {domain} does not accept mail (null MX)", True)
    return Destination(hosts, routed=False)
