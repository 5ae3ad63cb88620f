"""Users: the store, password hashing, and the look-ups the receiver and runner need.

The users live in the shared database (:mod:`tmail.db`: by default one SQLite file in the
data dir, or PostgreSQL for several nodes), used by the API's gunicorn workers, the SMTP
receiver, the runner, the CLI and, read-only, Dovecot. Passwords
are hashed twice on purpose: ``Passwd`` (bcrypt, checked by tmail) and ``DovePasswd``
(SHA512-crypt, the scheme Dovecot's ``SHA512-CRYPT`` reads without any plugin).

Logins are case-insensitive, as mail admins expect (Postfix's maps and Dovecot's ``%Lu``
lower-case them): each row carries ``login_key``, the lower-cased :attr:`Address.key`, under a
unique index, and every look-up goes through it. ``login`` keeps the spelling the admin gave.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from passlib.context import CryptContext
from passlib.hash import sha512_crypt
from sqlalchemy import (
    Connection,
    Row,
    ScalarSelect,
    Select,
    delete,
    false,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tmail.address import Address, AddressError, domain_of
from tmail.db import Database, bump_generation, open_database, open_migrated
from tmail.users_table import users

if TYPE_CHECKING:
    from tmail.config import Config


# bcrypt as tmail writes it: "$2a$10$..."; one context so that schemes can be upgraded later.
_PASSWORDS = CryptContext(schemes=["bcrypt"], bcrypt__ident="2a", bcrypt__rounds=10)
# Dovecot's SHA512-CRYPT with the implicit 5000 rounds: "$6$<16-char salt>$...".
_DOVECOT = sha512_crypt.using(rounds=5000, salt_size=16)
_DUMMY_HASH = _PASSWORDS.hash("not a password of anyone")
# The seed's answer to a second user with the same login (whatever its case now).
_DUPLICATE = "UNIQUE constraint failed: users.login"


class UserError(Exception):
    """A user operation the store refuses; ``raw`` is the underlying reason."""

    msg = "user error"

    def __init__(self, raw: str) -> None:
        super().__init__(raw)
        self.raw = raw


class UserExists(UserError):
    msg = "unable to create new user"


class CatchallExists(UserError):
    msg = "unable to create new user"


class InvalidLogin(UserError):
    """A login the store refuses (the API answers 422, the CLI exits with EX_DATAERR)."""

    msg = "invalid input"

    def __init__(self, reason: str) -> None:
        super().__init__(f"login: {reason}")


# A relay-only user (no mailbox) may have a plain name; Dovecot's default auth_username_chars.
_PLAIN_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{3,63}")


def check_login(login: str, have_mailbox: bool) -> Address | None:
    """The login as an :class:`Address` (``None`` for a plain relay-only name), or
    :class:`InvalidLogin` with the reason: the one check every caller of the store gets.

    RFC 5321 lets a local part hold ``/`` or be quoted (``"../x"``); as a login's local part
    names a directory under the mailboxes directory, tmail refuses those instead of mapping
    them (a mapping would make two logins share a Home, or a Home nobody can guess).
    """
    try:
        address = Address.parse(login, allow_utf8=True)
    except AddressError as exc:
        if not have_mailbox and "@" not in login and _PLAIN_NAME.fullmatch(login):
            return None
        raise InvalidLogin(f"must be an address such as user@example.org ({exc}); a user "
                           "without a mailbox may instead have a name of 4 to 64 letters, "
                           "digits, '.', '-' or '_'") from None
    if address.local.startswith('"'):
        raise InvalidLogin("a quoted local part is not accepted in a login")
    if "/" in address.local:
        raise InvalidLogin("'/' is not accepted in a login (its local part names a directory)")
    if address.domain.startswith("["):
        raise InvalidLogin("the domain must be a domain name, not an address literal")
    if any(unicodedata.category(char)[0] in "CZ" for char in address.local):
        raise InvalidLogin("control, format and space characters are not accepted in a login")
    return address


def login_key(login: str) -> str:
    """The case-insensitive key of a login: :attr:`Address.key` (lower case, A-label domain)
    for an address, the lower-cased text for anything else (a relay-only name, a legacy row)."""
    try:
        return Address.parse(login, allow_utf8=True).key
    except AddressError:
        return login.lower()


@dataclass(frozen=True)
class User:
    id: int
    login: str
    passwd: str
    dove_passwd: str
    active: str
    auth_relay: bool
    have_mailbox: bool
    mailbox_quota: str
    home: str
    is_catchall: bool

    @property
    def maildir(self) -> Path:
        return Path(self.home) / "Maildir"

    @property
    def domain(self) -> str:
        return domain_of(self.login)


def home_for(mailboxes_dir: Path, address: Address) -> Path:
    """``<mailboxes>/t/tmail.io/t/test`` for ``test@tmail.io``, as tmail lays it out (the
    domain in its A-label form, the local part as given).

    Checked, not assumed: a Home that would not lie inside the mailboxes directory (by its
    text: a symlinked domain directory is the admin's choice) is refused.
    """
    domain, local = address.ascii_domain, address.local
    home = mailboxes_dir / domain[0] / domain / local[0] / local
    parts = home.relative_to(mailboxes_dir).parts if home.is_relative_to(mailboxes_dir) else ()
    if len(parts) != 4 or ".." in parts:  # pathlib drops "." parts: they shorten it too
        raise InvalidLogin(f"its Home {home} would not lie inside {mailboxes_dir}")
    return home


class UserStore:
    """Users in the shared database (:mod:`tmail.db`), safe for threads, processes and nodes.

    Each method is one short transaction; nothing is cached here, so that a user deleted or
    a password changed through any process or node is effective at the next look-up. A
    database that cannot be reached raises :class:`~tmail.db.DatabaseUnavailable`.
    """

    def __init__(self, database: Database, mailboxes_dir: Path, default_quota: str = "") -> None:
        self.database = database
        self.mailboxes_dir = mailboxes_dir
        self.default_quota = default_quota

    def generation(self) -> int:
        """A number that moves with every committed change to the users (in any process, on
        any node): the ``directory`` counter row, bumped in the same transaction as each
        write. One primary-key read: the receiver calls it per RCPT to know when to re-read
        its local domains, instead of caching them for a while."""
        return self.database.generation()

    # --- administration (the API and the CLI) --------------------------------------------

    def create(
        self,
        login: str,
        password: str,
        *,
        auth_relay: bool = False,
        have_mailbox: bool = False,
        mailbox_quota: str | None = None,
        is_catchall: bool = False,
    ) -> User:
        address = check_login(login, have_mailbox)
        home = str(home_for(self.mailboxes_dir, address)) if address and have_mailbox else ""
        domain = address.domain if address else ""
        quota = (mailbox_quota if mailbox_quota is not None else self.default_quota) if (
            have_mailbox) else ""
        row = {"login": login, "login_key": login_key(login), "passwd": _PASSWORDS.hash(password),
               "dove_passwd": _DOVECOT.hash(password), "auth_relay": int(auth_relay),
               "have_mailbox": int(have_mailbox), "mailbox_quota": quota, "home": home,
               "is_catchall": int(is_catchall), "domain": domain}
        try:
            with self.database.begin() as conn:
                [user_id] = conn.execute(insert(users).values(row)).inserted_primary_key
                bump_generation(conn)
                created = conn.execute(select(users).where(users.c.id == user_id)).one()
        except IntegrityError:
            # Which unique index refused it, asked of the data rather than of each engine's
            # error text: the login (either spelling) or the domain's one catchall.
            if is_catchall and self.get(login) is None and self._catchall(domain) is not None:
                raise CatchallExists(f"domain {domain} already has a catchall") from None
            raise UserExists(_DUPLICATE) from None
        return _user(created)

    def get(self, login: str) -> User | None:
        with self.database.connect() as conn:
            return _one(conn, _by_login(select(users), login))

    def list(self) -> list[User]:
        with self.database.connect() as conn:
            return [_user(row) for row in conn.execute(select(users).order_by(users.c.id))]

    def set_password(self, login: str, password: str) -> bool:
        passwd, dove_passwd = _PASSWORDS.hash(password), _DOVECOT.hash(password)
        with self.database.begin() as conn:
            changed = conn.execute(update(users).where(users.c.id == _id_of(login))
                                   .values(passwd=passwd, dove_passwd=dove_passwd)).rowcount
            bump_generation(conn)
        return changed == 1

    def delete(self, login: str) -> bool:
        """Remove the user; its Maildir stays on disk (an API call never destroys mail)."""
        with self.database.begin() as conn:
            deleted = conn.execute(delete(users).where(users.c.id == _id_of(login))).rowcount
            bump_generation(conn)
        return deleted == 1

    # --- look-ups for the SMTP receiver and the runner -----------------------------------

    def authenticate(self, login: str, password: str) -> User | None:
        """The active user with this password, or ``None``; costs one bcrypt either way."""
        user = self.get(login)
        if user is None or user.active != "Y":
            _PASSWORDS.verify(password, _DUMMY_HASH)  # same time whether the user exists or not
            return None
        return user if _PASSWORDS.verify(password, user.passwd) else None

    def local_domains(self) -> set[str]:
        query = (select(users.c.domain).distinct()
                 .where(users.c.have_mailbox == 1, users.c.domain != ""))
        with self.database.connect() as conn:
            return set(conn.scalars(query))

    def find_mailbox(self, address: str | Address) -> User | None:
        """The user with a mailbox for ``address``, else its domain's catchall, else ``None``.

        Two look-ups on unique indexes (``login_key``, then the domain's one catchall).
        """
        if not isinstance(address, Address):
            try:
                address = Address.parse(address, allow_utf8=True)
            except AddressError:
                return None
        if not _storable(address.key):
            return None
        with self.database.connect() as conn:
            user = _one(conn, select(users).where(
                users.c.login_key == address.key, users.c.have_mailbox == 1,
                users.c.active == "Y"))
        return user or self._catchall(address.domain, active=True)

    def _catchall(self, domain: str, *, active: bool = False) -> User | None:
        if not _storable(domain):
            return None
        query = select(users).where(users.c.domain == domain, users.c.is_catchall == 1,
                                    users.c.have_mailbox == 1)
        with self.database.connect() as conn:
            return _one(conn, query.where(users.c.active == "Y") if active else query)


def open_store(config: Config, lazy: bool = True) -> UserStore:
    """The users store of this process: its database opened and migrated (at start-up, or,
    for a server while the database is away, at first use: :meth:`Database.start`). A
    command (``lazy`` False) gets DatabaseUnavailable at once instead."""
    if lazy:
        database = open_database(config)
        database.start()
    else:
        database = open_migrated(config)
    return UserStore(database, config.mailboxes_dir, config.default_quota)


def _storable(text: str) -> bool:
    """Whether ``text`` can be a value in a query: PostgreSQL's text holds no NUL, and no
    engine takes a lone surrogate. Such a login or address names nobody."""
    return "\0" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


def _by_login(query: Select[Any], login: str) -> Select[Any]:
    """One user by login: the exact spelling first (only legacy rows can differ), else the
    key; both are unique indexes."""
    if not _storable(login):
        return query.where(false())
    exact = users.c.login == login
    return query.where(or_(exact, users.c.login_key == login_key(login))).order_by(
        exact.desc()).limit(1)


def _id_of(login: str) -> ScalarSelect[Any]:
    return _by_login(select(users.c.id), login).scalar_subquery()


def _one(conn: Connection, query: Select[Any]) -> User | None:
    row = conn.execute(query).first()
    return _user(row) if row else None


def _user(row: Row[Any]) -> User:
    values = row._mapping
    return User(
        id=values["id"],
        login=values["login"],
        passwd=values["passwd"],
        dove_passwd=values["dove_passwd"],
        active=values["active"],
        auth_relay=bool(values["auth_relay"]),
        have_mailbox=bool(values["have_mailbox"]),
        mailbox_quota=values["mailbox_quota"],
        home=values["home"],
        is_catchall=bool(values["is_catchall"]),
    )
