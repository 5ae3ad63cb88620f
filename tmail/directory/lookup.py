"""The directory as the mail path reads it: which domains are local or relayed, which
clients may relay, and the look-ups of alias expansion.

The small sets (local and relay domains, relay networks) are kept in memory and re-read
whenever the ``directory`` generation moved (:meth:`tmail.db.Database.generation`: one
prepared read per decision, :mod:`tmail.generations`). Every write to users, domains,
aliases or relay networks bumps it in its own transaction, on whichever node: a change is
effective at the next SMTP command on every node, and nothing can serve a deleted domain.
Aliases and users are looked up per address on unique indexes, never cached. A decision
that needs no such look-up (a relayed recipient, an untrusted client's message at signing)
takes no pooled connection at all.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, select

from tmail.address import Address, AddressError
from tmail.config import Config
from tmail.db import Database
from tmail.directory import relayips
from tmail.directory.aliases import alias_entry
from tmail.directory.expansion import AliasEntry, ExpansionError, expand
from tmail.directory.local import local_domains, relay_domains
from tmail.queue import Target
from tmail.users_table import users


@dataclass(frozen=True)
class Snapshot:
    generation: int
    local: frozenset[str]  # both forms (A-label and Unicode) of every local domain
    relay: frozenset[str]  # A-labels of the domains with local false
    networks: tuple[relayips.Network, ...]  # TMAIL_RELAY_NETWORKS and the stored ones


class Directory:
    """One per process: thread-safe, each call on a connection of its own."""

    def __init__(self, database: Database, config: Config) -> None:
        self.db = database
        self.config = config
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        generation = self.db.generation()
        current = self._snapshot
        if current is not None and current.generation == generation:
            return current
        # Read after the generation: what is loaded is at least that new; a write in
        # between only costs one more reload at the next call.
        with self.db.connect() as conn:
            fresh = Snapshot(generation, local_domains(conn, self.config.local_domains),
                             relay_domains(conn),
                             (*self.config.relay_networks, *relayips.networks(conn)))
        with self._lock:
            self._snapshot = fresh
        return fresh

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """The look-ups of one decision, on one snapshot and (taken at its first query, if
        any) one connection."""
        with ExitStack() as stack:
            yield Reader(self.snapshot(), lambda: stack.enter_context(self.db.connect()))

    def resolve(self, text: str, postmaster: Address | None = None) -> list[Target]:
        """What a locally submitted recipient (``sendmail``) is queued for: the expansion of
        an address in a local domain, else the address itself. Nobody is there to refuse
        an unknown or looping address to: it is kept, and the runner bounces it to the
        sender, as Postfix's sendmail does."""
        try:
            address = Address.parse(text, allow_utf8=True)
        except AddressError:
            return [Target(text, text)]  # the enqueue says what is wrong with it
        with self.reading() as reader:
            if reader.is_local(address):
                try:
                    return expand(address, reader, postmaster, given=text)
                except ExpansionError:
                    pass
        return [Target(text, text)]

    def local_domains(self) -> frozenset[str]:
        """Every local domain (both forms): for the runner's local-or-remote choice."""
        with self.reading() as reader:
            return reader.snapshot.local


class Reader:
    """:class:`tmail.directory.expansion.Lookup` on one connection, plus relay checks."""

    def __init__(self, snapshot: Snapshot, connect: Callable[[], Connection]) -> None:
        self.snapshot = snapshot
        self._connect = connect
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        """The decision's connection, taken from the pool at its first use."""
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def is_local(self, address: Address) -> bool:
        return address.ascii_domain in self.snapshot.local or (
            address.domain in self.snapshot.local)

    def is_relay_domain(self, address: Address) -> bool:
        return address.ascii_domain in self.snapshot.relay

    def in_relay_networks(self, client_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.snapshot.networks)

    def alias(self, key: str) -> AliasEntry | None:
        return alias_entry(self.conn, key)

    def has_mailbox(self, address: Address) -> bool:
        return self.conn.execute(select(users.c.id).where(
            users.c.login_key == address.key, users.c.have_mailbox == 1,
            users.c.active == "Y")).first() is not None

    def has_catchall(self, address: Address) -> bool:
        return self.conn.execute(select(users.c.id).where(
            users.c.domain == address.domain, users.c.is_catchall == 1,
            users.c.have_mailbox == 1, users.c.active == "Y")).first() is not None
