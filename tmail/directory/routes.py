"""Routes in the directory (tmail's ``routes``): stored ones, and ``TMAIL_ROUTES`` as a
read-only bootstrap listed with them. The value type and the matching rules are
:mod:`tmail.routes`; this module checks, stores and reads them.

The smart-host password is write-only: :class:`~tmail.routes.Route` never shows it, the API's
schema has no field to dump it into, and it is read only by :meth:`RouteStore.for_delivery`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, get_args

import idna
from sqlalchemy import delete, insert, select
from sqlalchemy import exc as sa_exc

from tmail.address import Address, AddressError
from tmail.config import Config
from tmail.db import Database, bump_generation
from tmail.directory.domains import normalize_domain
from tmail.directory.errors import Conflict, InvalidEntry
from tmail.directory.tables import routes, valid_entry_id
from tmail.routes import WILDCARD, Route, StartTls
from tmail.users import login_key

_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
STARTTLS_MODES: tuple[str, ...] = get_args(StartTls)


def check_remote_host(text: str) -> str:
    """A host name (one label will do: ``localhost``, a name in /etc/hosts) or an IP
    address, with or without brackets; stored as the runner connects to it."""
    bare = text.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        name = idna.encode(bare.rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        name = ""
    if not name or len(name) > 253 or not all(map(_HOST_LABEL.fullmatch, name.split("."))):
        raise InvalidEntry(f"remoteHost: {text!r} is not a host name or an IP address")
    return name


def make_route(host: str, remote_host: str, *, remote_port: int = 25, priority: int = 0,
               starttls: str = "may", mail_from: str | None = None,
               auth_user: str | None = None, auth_login: str | None = None,
               auth_password: str | None = None, allow_plaintext_auth: bool = False,
               route_id: int | None = None) -> Route:
    """A checked :class:`Route` (:class:`InvalidEntry` naming the field otherwise): the one
    check the API and the CLI share."""
    destination = WILDCARD if host.strip() == WILDCARD else normalize_domain(host)[1]
    if not 0 < remote_port < 65536:
        raise InvalidEntry("remotePort: must be between 1 and 65535")
    if priority < 0:
        raise InvalidEntry("priority: must be 0 or more (lower first)")
    if starttls not in STARTTLS_MODES:
        raise InvalidEntry(f"starttls: must be one of {', '.join(STARTTLS_MODES)}")
    if bool(auth_login) != bool(auth_password):
        raise InvalidEntry("authLogin: authLogin and authPassword go together")
    if allow_plaintext_auth and starttls != "none":
        raise InvalidEntry("allowPlaintextAuth: only for a route with starttls none")
    if auth_login and starttls == "none" and not allow_plaintext_auth:
        raise InvalidEntry("starttls: AUTH over a connection without TLS sends the password "
                           "in clear: set allowPlaintextAuth true to mean it")
    return Route(host=destination, remote_host=check_remote_host(remote_host),
                 remote_port=remote_port, priority=priority,
                 starttls=starttls,  # type: ignore[arg-type]
                 mail_from=_sender_key(mail_from) if mail_from else None,
                 auth_user=login_key(auth_user) if auth_user else None,
                 auth_login=auth_login or None, auth_password=auth_password or None,
                 allow_plaintext_auth=allow_plaintext_auth, id=route_id)


def _sender_key(text: str) -> str:
    try:
        return Address.parse(text.strip(), allow_utf8=True).key
    except AddressError as exc:
        raise InvalidEntry(f"mailFrom: {text!r} is not an address ({exc})") from None


def bootstrap(config: Config) -> list[Route]:
    """``TMAIL_ROUTES`` as routes (``id`` None), with the runner's STARTTLS policy."""
    found = []
    for pattern, target in config.routes:
        host = pattern if pattern == WILDCARD else normalize_domain(pattern)[1]
        found.append(Route(host=host, remote_host=target.host, remote_port=target.port,
                           starttls=config.runner_starttls))  # type: ignore[arg-type]
    return found


def _route(row: Any, *, with_password: bool) -> Route:
    return Route(host=row.host, remote_host=row.remote_host, remote_port=row.remote_port,
                 priority=row.priority, starttls=row.starttls,
                 mail_from=row.mail_from or None, auth_user=row.auth_user or None,
                 auth_login=row.auth_login or None,
                 auth_password=(row.auth_password or None) if with_password else None,
                 allow_plaintext_auth=bool(row.allow_plaintext_auth), id=row.id)


class RouteStore:
    def __init__(self, database: Database, config: Config) -> None:
        self.db = database
        self.config = config

    def list(self) -> list[Route]:
        """Stored routes (without their passwords), then the ``TMAIL_ROUTES`` bootstrap."""
        with self.db.connect() as conn:
            rows = conn.execute(select(routes).order_by(routes.c.id)).all()
        return [_route(row, with_password=False) for row in rows] + bootstrap(self.config)

    def get(self, route_id: int) -> Route | None:
        if not valid_entry_id(route_id):
            return None
        with self.db.connect() as conn:
            row = conn.execute(select(routes).where(routes.c.id == route_id)).first()
        return _route(row, with_password=False) if row else None

    def for_delivery(self) -> list[Route]:
        """Every route the runner chooses among, passwords included (stored, then bootstrap)."""
        with self.db.connect() as conn:
            rows = conn.execute(select(routes).order_by(routes.c.id)).all()
        return [_route(row, with_password=True) for row in rows] + bootstrap(self.config)

    def create(self, route: Route) -> Route:
        values = {"host": route.host, "mail_from": route.mail_from or "",
                  "auth_user": route.auth_user or "", "remote_host": route.remote_host,
                  "remote_port": route.remote_port, "priority": route.priority,
                  "starttls": route.starttls, "auth_login": route.auth_login or "",
                  "auth_password": route.auth_password or "",
                  "allow_plaintext_auth": route.allow_plaintext_auth}
        try:
            with self.db.begin() as conn:
                new_id = conn.execute(insert(routes).values(**values)).inserted_primary_key[0]
                bump_generation(conn)
        except sa_exc.IntegrityError:
            raise Conflict(f"{route.host} via {route.remote_host}:{route.remote_port}",
                           "route exists") from None
        stored = self.get(int(new_id))
        assert stored is not None
        return stored

    def delete(self, route_id: int) -> bool:
        if not valid_entry_id(route_id):
            return False
        with self.db.begin() as conn:
            gone = conn.execute(delete(routes).where(routes.c.id == route_id)).rowcount
            if gone:
                bump_generation(conn)
        return bool(gone)
