"""A route: where mail for a destination goes instead of its MX (tmail's ``routes``).

The value type is shared by every process: the API and the CLI validate and store routes, the
runner chooses among them. Storage lives in the directory (the SQL layer); ``TMAIL_ROUTES``
stays as a bootstrap whose entries are routes like the stored ones, with ``id`` None.

Matching follows tmail and Postfix's ``transport_maps``: a route applies to a message when its
``host`` is the recipient's domain (or ``*``), and, when set, its ``mail_from`` is the envelope
sender and its ``auth_user`` the authenticated user. The most specific matching routes win;
among them the lowest ``priority`` is tried first, equal priorities share the load, higher
priorities are fail-overs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

StartTls = Literal["may", "encrypt", "none"]
WILDCARD = "*"


@dataclass(frozen=True)
class Route:
    """One route. ``auth_password`` is write-only: never shown by the API, the CLI or a log."""

    host: str  # lower-case A-label domain, or WILDCARD
    remote_host: str
    remote_port: int = 25
    priority: int = 0
    starttls: StartTls = "may"
    mail_from: str | None = None  # lookup key (Address.key) of the envelope sender
    auth_user: str | None = None  # lookup key of the authenticated user
    auth_login: str | None = None
    auth_password: str | None = None
    # AUTH without TLS is refused unless the route says so explicitly (starttls "none" only).
    allow_plaintext_auth: bool = False
    id: int | None = None  # None for TMAIL_ROUTES entries

    def __repr__(self) -> str:
        """Never the password, so that a route can be logged or shown in a traceback."""
        secret = "***" if self.auth_password is not None else None
        return (
            f"Route(id={self.id!r}, host={self.host!r}, mail_from={self.mail_from!r}, "
            f"auth_user={self.auth_user!r}, remote={self.remote_host!r}:{self.remote_port}, "
            f"priority={self.priority}, starttls={self.starttls!r}, "
            f"auth_login={self.auth_login!r}, auth_password={secret!r})"
        )


def _specificity(route: Route) -> tuple[bool, bool, bool]:
    """Host first, then sender, then authenticated user: a route for the exact domain beats
    ``*`` whatever else it says; among those, one for this sender beats one for anyone."""
    return (route.host != WILDCARD, route.mail_from is not None, route.auth_user is not None)


def matching(routes: Iterable[Route], domain: str, sender: str = "",
             auth_user: str = "") -> list[Route]:
    """The most specific routes that apply to mail for ``domain`` (A-label, lower case)
    from ``sender`` submitted by ``auth_user`` (lookup keys, "" for none); [] when none
    applies (the mail goes by MX)."""
    applying = [route for route in routes
                if route.host in (domain, WILDCARD)
                and route.mail_from in (None, sender or None)
                and route.auth_user in (None, auth_user or None)]
    if not applying:
        return []
    best = max(map(_specificity, applying))
    return [route for route in applying if _specificity(route) == best]


def failover_order(routes: Iterable[Route], rng: random.Random | None = None) -> list[Route]:
    """Lowest priority first; routes of equal priority in random order, so that they share
    the load; each higher priority is a fail-over for the ones before it."""
    rng = rng or random.Random()
    groups: dict[int, list[Route]] = {}
    for route in routes:
        groups.setdefault(route.priority, []).append(route)
    ordered: list[Route] = []
    for priority in sorted(groups):
        group = groups[priority]
        rng.shuffle(group)
        ordered.extend(group)
    return ordered
