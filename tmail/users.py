"""Users: the SQLite store, password hashing, and the look-ups the receiver and runner need.

One SQLite file in the data dir (WAL mode, so readers never block the writer) is shared by
the API's gunicorn workers, the SMTP receiver, the runner and, read-only, Dovecot. Passwords
are hashed twice on purpose: ``Passwd`` (bcrypt, checked by tmail) and ``DovePasswd``
(SHA512-crypt, the scheme Dovecot's ``SHA512-CRYPT`` reads without any plugin).

Logins are case-insensitive, as mail admins expect (Postfix's maps and Dovecot's ``%Lu``
lower-case them): each row carries ``login_key``, the lower-cased :attr:`Address.key`, under a
unique index, and every look-up goes through it. ``login`` keeps the spelling the admin gave.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from passlib.context import CryptContext
from passlib.hash import sha512_crypt

from tmail import sqlite as tmail_sqlite
from tmail.address import Address, AddressError, domain_of

log = logging.getLogger(__name__)

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


def _add_login_key(conn: sqlite3.Connection) -> None:
    """Migration 2: ``login_key`` under a unique index, computed here (SQLite's ``lower()``
    knows only ASCII, and the key's domain is the IDNA form).

    Two logins differing only by case could exist before: the oldest gets the key (as the
    old case-insensitive look-ups found it first); the others keep ``NULL`` and stay
    reachable by their exact spelling, so that nothing is lost and the admin can delete them.
    """
    conn.execute("ALTER TABLE users ADD COLUMN login_key TEXT")
    seen: set[str] = set()
    for user_id, login in conn.execute("SELECT id, login FROM users ORDER BY id").fetchall():
        key = login_key(login)
        if key in seen:
            log.warning("users.db: login %r differs only by case from an older one: reachable"
                        " by its exact spelling only; delete one of them", login)
            continue
        seen.add(key)
        conn.execute("UPDATE users SET login_key = ? WHERE id = ?", (key, user_id))
    conn.execute("CREATE UNIQUE INDEX users_login_key ON users (login_key)")


_MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        login TEXT NOT NULL UNIQUE,
        passwd TEXT NOT NULL,
        dove_passwd TEXT NOT NULL,
        active TEXT NOT NULL DEFAULT 'Y',
        auth_relay INTEGER NOT NULL DEFAULT 0,
        have_mailbox INTEGER NOT NULL DEFAULT 0,
        mailbox_quota TEXT NOT NULL DEFAULT '',
        home TEXT NOT NULL DEFAULT '',
        is_catchall INTEGER NOT NULL DEFAULT 0,
        domain TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX users_domain ON users (domain);
    CREATE UNIQUE INDEX users_one_catchall ON users (domain) WHERE is_catchall = 1;
    """,
    _add_login_key,
]

# One user by login: the exact spelling first (only legacy rows can differ), else the key.
_BY_LOGIN = "(login = :login OR login_key = :key)"


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
    """Users in SQLite, safe for several threads and processes (one connection per thread)."""

    def __init__(self, db_path: Path, mailboxes_dir: Path, default_quota: str = "") -> None:
        self.db_path = db_path
        self.mailboxes_dir = mailboxes_dir
        self.default_quota = default_quota
        self._local = threading.local()
        self._watch_lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = tmail_sqlite.connect(self.db_path)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        """Apply the forward migrations this database has not seen (``user_version``)."""
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(_MIGRATIONS[version:], start=version + 1):
                if callable(migration):
                    migration(conn)
                else:
                    for statement in filter(str.strip, migration.split(";")):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def generation(self) -> int:
        """A number that changes whenever any process commits a change to the users.

        SQLite's ``PRAGMA data_version`` moves when *another* connection commits; it is read
        on a connection of its own that never writes, so this store's commits (from any
        thread) count as well. Costs one pragma, no query: a receiver may call it per RCPT.
        """
        with self._watch_lock:
            if self._watch is None:
                self._watch = tmail_sqlite.connect(self.db_path, check_same_thread=False)
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

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
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO users (login, login_key, passwd, dove_passwd, auth_relay,"
                    " have_mailbox, mailbox_quota, home, is_catchall, domain)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (login, login_key(login), _PASSWORDS.hash(password),
                     _DOVECOT.hash(password), auth_relay, have_mailbox, quota, home,
                     is_catchall, domain),
                )
        except sqlite3.IntegrityError as exc:
            if "users.domain" in str(exc):
                raise CatchallExists(f"domain {domain} already has a catchall") from None
            raise UserExists(_DUPLICATE) from None
        user = self.get(login)
        assert user is not None
        return user

    def get(self, login: str) -> User | None:
        row = self._connection().execute(
            f"SELECT * FROM users WHERE {_BY_LOGIN} ORDER BY login = :login DESC LIMIT 1",
            _login_params(login),
        ).fetchone()
        return _user(row) if row else None

    def list(self) -> list[User]:
        rows = self._connection().execute("SELECT * FROM users ORDER BY id").fetchall()
        return [_user(row) for row in rows]

    def set_password(self, login: str, password: str) -> bool:
        passwd, dove_passwd = _PASSWORDS.hash(password), _DOVECOT.hash(password)
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET passwd = :passwd, dove_passwd = :dove_passwd WHERE id = ("
                f"SELECT id FROM users WHERE {_BY_LOGIN} ORDER BY login = :login DESC LIMIT 1)",
                {**_login_params(login), "passwd": passwd, "dove_passwd": dove_passwd},
            )
        return cursor.rowcount == 1

    def delete(self, login: str) -> bool:
        """Remove the user; its Maildir stays on disk (an API call never destroys mail)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM users WHERE id = ("
                f"SELECT id FROM users WHERE {_BY_LOGIN} ORDER BY login = :login DESC LIMIT 1)",
                _login_params(login),
            )
        return cursor.rowcount == 1

    # --- look-ups for the SMTP receiver and the runner -----------------------------------

    def authenticate(self, login: str, password: str) -> User | None:
        """The active user with this password, or ``None``; costs one bcrypt either way."""
        user = self.get(login)
        if user is None or user.active != "Y":
            _PASSWORDS.verify(password, _DUMMY_HASH)  # same time whether the user exists or not
            return None
        return user if _PASSWORDS.verify(password, user.passwd) else None

    def local_domains(self) -> set[str]:
        rows = self._connection().execute(
            "SELECT DISTINCT domain FROM users WHERE have_mailbox = 1 AND domain != ''"
        )
        return {row[0] for row in rows}

    def find_mailbox(self, address: str | Address) -> User | None:
        """The user with a mailbox for ``address``, else its domain's catchall, else ``None``.

        Two look-ups on unique indexes (``login_key``, then the domain's one catchall).
        """
        if not isinstance(address, Address):
            try:
                address = Address.parse(address, allow_utf8=True)
            except AddressError:
                return None
        conn = self._connection()
        row = conn.execute(
            "SELECT * FROM users WHERE login_key = ? AND have_mailbox = 1 AND active = 'Y'",
            (address.key,),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT * FROM users WHERE domain = ? AND is_catchall = 1 AND have_mailbox = 1"
                " AND active = 'Y'",
                (address.domain,),
            ).fetchone()
        return _user(row) if row else None


def _login_params(login: str) -> dict[str, str]:
    return {"login": login, "key": login_key(login)}


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        login=row["login"],
        passwd=row["passwd"],
        dove_passwd=row["dove_passwd"],
        active=row["active"],
        auth_relay=bool(row["auth_relay"]),
        have_mailbox=bool(row["have_mailbox"]),
        mailbox_quota=row["mailbox_quota"],
        home=row["home"],
        is_catchall=bool(row["is_catchall"]),
    )
