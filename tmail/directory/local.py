"""Which domains are local: the one definition the receiver, the API and the runner share.

Local domains are the domains with ``local`` true, plus (as before the directory existed) the
domains of users with a mailbox and ``TMAIL_LOCAL_DOMAINS``. A domain with ``local`` false is
a relay domain: mail for it is accepted from anyone and relayed (a backup MX).
"""

from __future__ import annotations

from collections.abc import Iterable

import idna
from sqlalchemy import Connection, select

from tmail.directory.tables import domains
from tmail.users_table import users


def domain_forms(ascii_domain: str) -> tuple[str, str]:
    """``(ascii, unicode)``: users' ``domain`` column holds the Unicode form of a login's
    domain, the directory's tables the A-label form."""
    try:
        return ascii_domain, idna.decode(ascii_domain) if "xn--" in ascii_domain else ascii_domain
    except idna.IDNAError:
        return ascii_domain, ascii_domain


def is_local_domain(conn: Connection, ascii_domain: str, extra: Iterable[str] = ()) -> bool:
    """``ascii_domain`` is local (two indexed look-ups, no cache)."""
    forms = domain_forms(ascii_domain)
    if any(form in extra for form in forms):
        return True
    if conn.scalar(select(domains.c.local).where(domains.c.name == ascii_domain)):
        return True
    return conn.execute(select(users.c.id).where(
        users.c.domain.in_(forms), users.c.have_mailbox == 1).limit(1)).first() is not None


def local_domains(conn: Connection, extra: Iterable[str] = ()) -> frozenset[str]:
    """Every local domain, in both forms (for a process that caches them by generation)."""
    names = set(conn.scalars(select(domains.c.name).where(domains.c.local.is_(True))))
    names |= set(conn.scalars(select(users.c.domain).where(
        users.c.have_mailbox == 1, users.c.domain != "").distinct()))
    names |= set(extra)
    return frozenset(form for name in names for form in (*domain_forms(name), *_ascii(name)))


def relay_domains(conn: Connection) -> frozenset[str]:
    """The domains with ``local`` false: accepted from anyone, relayed."""
    return frozenset(conn.scalars(select(domains.c.name).where(domains.c.local.is_(False))))


def _ascii(name: str) -> tuple[str, ...]:
    try:
        return (idna.encode(name, uts46=True).decode("ascii"),)
    except (idna.IDNAError, UnicodeError):
        return ()
