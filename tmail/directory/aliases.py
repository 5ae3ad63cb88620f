"""Aliases: addresses (``info@example.org``) and whole domains (``@old.example``) that
forward to other addresses, pipe to a program, or act as a small list (tmail's ``alias``).

``deliverTo`` targets are addresses, or ``@domain`` to keep the local part (a domain alias
``@old.example -> @new.example``). ``pipe`` is a command line, run by the runner without a
shell (split as a shell would, no expansion). A ``miniList`` alias makes its address the
envelope sender of what it forwards, so that bounces go to the list, not to each member.

An alias is keyed like a login (:attr:`tmail.address.Address.key`: lower case, A-label
domain), so ``Info@Example.ORG`` is ``info@example.org``; its targets are kept as given.
"""

from __future__ import annotations

import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy import exc as sa_exc

from tmail.address import Address, AddressError
from tmail.db import Database, bump_generation
from tmail.directory.domains import normalize_domain
from tmail.directory.errors import Conflict, InvalidEntry
from tmail.directory.expansion import AliasEntry
from tmail.directory.local import is_local_domain
from tmail.directory.tables import alias_targets, aliases

MAX_TARGETS = 1000
MAX_PIPE = 1000  # characters of a command line



@dataclass(frozen=True)
class Alias:
    id: int
    address: str  # local@domain or @domain
    domain: str  # A-label
    deliver_to: tuple[str, ...]
    pipe: str
    mini_list: bool

    @property
    def local(self) -> str:
        """The local part; ``""`` for a domain alias."""
        return self.address.rpartition("@")[0]

    @property
    def entry(self) -> AliasEntry:
        return AliasEntry(self.deliver_to, self.pipe, self.mini_list)


@dataclass(frozen=True)
class AliasAddress:
    address: str
    key: str
    domain: str  # A-label


def parse_alias_address(text: str) -> AliasAddress:
    """``local@domain`` or ``@domain``, checked as any address is (422 otherwise)."""
    if text.startswith("@"):
        _, ascii_form = normalize_domain(text[1:])
        return AliasAddress(f"@{ascii_form}", f"@{ascii_form}", ascii_form)
    try:
        address = Address.parse(text, allow_utf8=True)
    except AddressError as exc:
        raise InvalidEntry(f"address: {text!r} is not local@domain or @domain ({exc})") from None
    if address.domain.startswith("["):
        raise InvalidEntry(f"address: {text!r}: an alias needs a domain name")
    return AliasAddress(str(address), address.key, address.ascii_domain)


def check_targets(deliver_to: Sequence[str], pipe: str) -> tuple[str, ...]:
    """The targets, normalised and without repeats; :class:`InvalidEntry` naming the first
    bad one, or when there is neither a target nor a command."""
    if not deliver_to and not pipe:
        raise InvalidEntry("deliverTo: an alias needs at least one of deliverTo and pipe")
    if len(deliver_to) > MAX_TARGETS:
        raise InvalidEntry(f"deliverTo: at most {MAX_TARGETS} targets")
    targets = []
    for text in deliver_to:
        if not isinstance(text, str):
            raise InvalidEntry(f"deliverTo: {text!r} is not an address")
        target = _domain_target(text) if text.strip().startswith("@") else None
        if target is None:
            try:
                target_address = Address.parse(text.strip(), allow_utf8=True)
            except AddressError as exc:
                raise InvalidEntry(f"deliverTo: {text!r} is not an address ({exc})") from None
            targets.append(str(target_address))
        else:
            targets.append(target.address)
    if pipe:
        check_pipe(pipe)
    return tuple(dict.fromkeys(targets))


def _domain_target(text: str) -> AliasAddress:
    """A ``@domain`` target, its error naming ``deliverTo`` (not the alias's own address)."""
    try:
        return parse_alias_address(text.strip())
    except InvalidEntry as exc:
        raise InvalidEntry(f"deliverTo: {exc.raw.removeprefix('domain: ')}") from None


def check_pipe(pipe: str) -> list[str]:
    """The command's words: an absolute program path and its arguments, no control
    character (the runner splits it the same way, never through a shell)."""
    if len(pipe) > MAX_PIPE:
        raise InvalidEntry(f"pipe: at most {MAX_PIPE} characters")
    if any(unicodedata.category(char) == "Cc" for char in pipe):
        raise InvalidEntry("pipe: control characters (newlines, tabs...) are not accepted")
    try:
        words = shlex.split(pipe)
    except ValueError as exc:
        raise InvalidEntry(f"pipe: {exc}") from None
    if not words or not words[0].startswith("/"):
        raise InvalidEntry("pipe: the command must start with an absolute path, "
                           "e.g. /usr/local/bin/cmd arg")
    return words


def _aliases(conn: Connection, where: object = None) -> list[Alias]:
    query = (select(aliases, alias_targets.c.target)
             .outerjoin(alias_targets, alias_targets.c.alias_id == aliases.c.id)
             .order_by(aliases.c.id, alias_targets.c.position))
    if where is not None:
        query = query.where(where)  # type: ignore[arg-type]
    found: dict[int, Alias] = {}
    for row in conn.execute(query):
        alias = found.get(row.id)
        if alias is None:
            alias = found[row.id] = Alias(row.id, row.address, row.domain, (), row.pipe,
                                          bool(row.mini_list))
        if row.target is not None:
            found[row.id] = Alias(alias.id, alias.address, alias.domain,
                                  (*alias.deliver_to, row.target), alias.pipe, alias.mini_list)
    return list(found.values())


class AliasStore:
    def __init__(self, database: Database, extra_local: Iterable[str] = ()) -> None:
        self.db = database
        self.extra_local = tuple(extra_local)  # TMAIL_LOCAL_DOMAINS

    def list(self) -> list[Alias]:
        with self.db.connect() as conn:
            return _aliases(conn)

    def get(self, address: str) -> Alias | None:
        try:
            key = parse_alias_address(address).key
        except InvalidEntry:  # no alias of that address, since none may have it
            return None
        with self.db.connect() as conn:
            found = _aliases(conn, aliases.c.address_key == key)
        return found[0] if found else None

    def create(self, address: str, deliver_to: Sequence[str] = (), pipe: str = "",
               mini_list: bool = False) -> Alias:
        parsed = parse_alias_address(address)
        targets = check_targets(deliver_to, pipe)
        try:
            with self.db.begin() as conn:
                self._check_local(conn, parsed)
                alias_id = conn.execute(insert(aliases).values(
                    address_key=parsed.key, address=parsed.address, domain=parsed.domain,
                    pipe=pipe, mini_list=mini_list)).inserted_primary_key[0]
                _write_targets(conn, alias_id, targets)
                bump_generation(conn)
        except sa_exc.IntegrityError:
            raise Conflict(parsed.address, "alias exists") from None
        return Alias(int(alias_id), parsed.address, parsed.domain, targets, pipe, mini_list)

    def replace(self, address: str, deliver_to: Sequence[str] = (), pipe: str = "",
                mini_list: bool = False) -> Alias | None:
        """Give the alias new targets, command and flag; ``None`` if there is none."""
        parsed = parse_alias_address(address)
        targets = check_targets(deliver_to, pipe)
        with self.db.begin() as conn:
            alias_id = conn.scalar(select(aliases.c.id).where(
                aliases.c.address_key == parsed.key))
            if alias_id is None:
                return None
            conn.execute(update(aliases).where(aliases.c.id == alias_id).values(
                pipe=pipe, mini_list=mini_list))
            conn.execute(delete(alias_targets).where(alias_targets.c.alias_id == alias_id))
            _write_targets(conn, alias_id, targets)
            bump_generation(conn)
            [alias] = _aliases(conn, aliases.c.id == alias_id)
        return alias

    def delete(self, address: str) -> bool:
        try:
            key = parse_alias_address(address).key
        except InvalidEntry:
            return False
        with self.db.begin() as conn:
            alias_id = conn.scalar(select(aliases.c.id).where(aliases.c.address_key == key))
            if alias_id is None:
                return False
            # Explicitly, not only by ON DELETE CASCADE: SQLite enforces it only with
            # foreign keys on, which a connection opened by another tool may not have.
            conn.execute(delete(alias_targets).where(alias_targets.c.alias_id == alias_id))
            conn.execute(delete(aliases).where(aliases.c.id == alias_id))
            bump_generation(conn)
        return True

    def _check_local(self, conn: Connection, parsed: AliasAddress) -> None:
        if not is_local_domain(conn, parsed.domain, self.extra_local):
            raise InvalidEntry(f"address: {parsed.domain} is not a local domain (create it "
                               "with POST /domains/NAME {\"local\": true} first)")


def alias_entry(conn: Connection, key: str) -> AliasEntry | None:
    """The alias of ``key`` as expansion needs it (the receiver's look-up, on its connection)."""
    found = _aliases(conn, aliases.c.address_key == key)
    return found[0].entry if found else None


def _write_targets(conn: Connection, alias_id: int, targets: Sequence[str]) -> None:
    if targets:
        conn.execute(insert(alias_targets), [
            {"alias_id": alias_id, "position": n, "target": t} for n, t in enumerate(targets)])
