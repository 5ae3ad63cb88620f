"""Domains: the ones we deliver into mailboxes (``local``) and the ones we accept to relay
(``local`` false: a backup MX or an inbound gateway), tmail's ``rcpthost``.

A domain is stored once, in lower case and in its IDNA A-label form (the form DNS, the queue's
``Host`` and the mailboxes tree use), so ``Bücher.DE`` and ``xn--bcher-kva.de`` are one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, or_, select
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


USERS_SHOWN = 5  # names a 409 lists of what still uses a domain


def _named(kind: str, names: list[str]) -> str:
    """``users a@x, b@x`` (and ``...`` past USERS_SHOWN): what a 409 says uses a domain."""
    if not names:
        return ""
    shown = ", ".join(names[:USERS_SHOWN]) + (", ..." if len(names) > USERS_SHOWN else "")
    plural = "es" if kind == "alias" else "s"
    return f"{kind}{plural if len(names) > 1 else ''} {shown}"


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
            users_of = conn.scalars(select(users.c.login).where(
                or_(users.c.domain == unicode_form, users.c.domain == ascii_form))
                .order_by(users.c.id).limit(USERS_SHOWN + 1)).all()
            aliases_of = conn.scalars(select(aliases.c.address).where(
                aliases.c.domain == ascii_form).order_by(aliases.c.id)
                .limit(USERS_SHOWN + 1)).all()
            if users_of or aliases_of:
                raise Conflict(f"{ascii_form} is still used by "
                               + " and ".join(part for part in (
                                   _named("user", users_of), _named("alias", aliases_of))
                                   if part) + ": delete them first", "domain in use")
            conn.execute(delete(domains).where(domains.c.name == ascii_form))
            bump_generation(conn)
        return True
