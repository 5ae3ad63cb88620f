"""Domains: the ones we deliver into mailboxes (``local``) and the ones we accept to relay
(``local`` false: a backup MX or an inbound gateway), tmail's ``rcpthost``.

A domain is stored once, in lower case and in its IDNA A-label form (the form DNS, the queue's
``Host`` and the mailboxes tree use), so ``Bücher.DE`` and ``xn--bcher-kva.de`` are one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy import exc as sa_exc

from tmail.address import AddressError, parse_domain
from tmail.db import Database, bump_generation
from tmail.directory.errors import Conflict, InvalidEntry
from tmail.directory.tables import aliases, domains
from tmail.users_table import users


@dataclass(frozen=True)
class Domain:
    id: int
    name: str  # lower-case A-label
    local: bool


def normalize_domain(text: str) -> tuple[str, str]:
    """``(unicode_form, ascii_form)`` of a mail domain, or :class:`InvalidEntry`.

    The one check for every domain the directory stores (:func:`tmail.address.parse_domain`,
    as addresses get): an address literal is no domain one can host.
    """
    try:
        unicode_form, ascii_form = parse_domain(text.strip())
    except AddressError as exc:
        raise InvalidEntry(f"domain: {text!r} is not a domain name ({exc})") from None
    if ascii_form.startswith("["):
        raise InvalidEntry(f"domain: {text!r} is an address literal, not a domain name")
    return unicode_form, ascii_form


def _row(row: object) -> Domain:
    return Domain(row.id, row.name, bool(row.local))  # type: ignore[attr-defined]


class DomainStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    def list(self) -> list[Domain]:
        with self.db.connect() as conn:
            return [_row(r) for r in conn.execute(select(domains).order_by(domains.c.name))]

    def get(self, name: str) -> Domain | None:
        try:
            _, ascii_form = normalize_domain(name)
        except InvalidEntry:  # no domain of that name, since none may have it
            return None
        with self.db.connect() as conn:
            row = conn.execute(select(domains).where(domains.c.name == ascii_form)).first()
        return _row(row) if row else None

    def create(self, name: str, *, local: bool) -> Domain:
        _, ascii_form = normalize_domain(name)
        try:
            with self.db.begin() as conn:
                new_id = conn.execute(insert(domains).values(name=ascii_form, local=local)
                                      ).inserted_primary_key[0]
                bump_generation(conn)
        except sa_exc.IntegrityError:
            raise Conflict(ascii_form, "domain exists") from None
        return Domain(int(new_id), ascii_form, local)

    def delete(self, name: str) -> bool:
        """Remove the domain; :class:`Conflict` naming what still uses it (its users and
        aliases: deleting it would silently turn their mail into relayed or refused mail)."""
        try:
            unicode_form, ascii_form = normalize_domain(name)
        except InvalidEntry:
            return False
        with self.db.begin() as conn:
            if conn.execute(select(domains.c.id).where(domains.c.name == ascii_form)
                            ).first() is None:
                return False
            user_count = conn.scalar(select(func.count()).select_from(users).where(
                or_(users.c.domain == unicode_form, users.c.domain == ascii_form)))
            alias_count = conn.scalar(select(func.count()).select_from(aliases).where(
                aliases.c.domain == ascii_form))
            if user_count or alias_count:
                raise Conflict(f"{ascii_form} is used by {user_count} user(s) and "
                               f"{alias_count} alias(es): delete them first", "domain in use")
            conn.execute(delete(domains).where(domains.c.name == ascii_form))
            bump_generation(conn)
        return True
