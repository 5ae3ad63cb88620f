"""Relay networks: clients allowed to relay without AUTH (tmail's ``relayip``, Postfix's
``mynetworks``), in addition to ``TMAIL_RELAY_NETWORKS``."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy import exc as sa_exc

from tmail.db import Database, bump_generation
from tmail.directory.errors import Conflict, InvalidEntry
from tmail.directory.tables import relay_networks, valid_entry_id

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RelayNetwork:
    id: int
    network: str  # CIDR, e.g. 192.0.2.0/24 or 2001:db8::/32 (one address: /32 or /128)


def parse_network(text: str) -> Network:
    """An IP address or a CIDR network, v4 or v6. Host bits set under the mask are refused
    rather than guessed at: ``192.0.2.1/24`` may mean the /24 or a typo for one address."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        loose = None
        with contextlib.suppress(ValueError):
            loose = ipaddress.ip_network(text.strip(), strict=False)
        hint = f" (the network is {loose})" if loose is not None else ""
        raise InvalidEntry(f"network: {text!r} is not an IP address or CIDR network: "
                           f"{exc}{hint}") from None


class RelayNetworkStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    def list(self) -> list[RelayNetwork]:
        with self.db.connect() as conn:
            rows = conn.execute(select(relay_networks).order_by(relay_networks.c.id))
            return [RelayNetwork(row.id, row.network) for row in rows]

    def get(self, network_id: int) -> RelayNetwork | None:
        if not valid_entry_id(network_id):
            return None
        with self.db.connect() as conn:
            row = conn.execute(select(relay_networks).where(
                relay_networks.c.id == network_id)).first()
        return RelayNetwork(row.id, row.network) if row else None

    def create(self, text: str) -> RelayNetwork:
        network = str(parse_network(text))
        try:
            with self.db.begin() as conn:
                new_id = conn.execute(insert(relay_networks).values(network=network)
                                      ).inserted_primary_key[0]
                bump_generation(conn)
        except sa_exc.IntegrityError:
            raise Conflict(network, "relay network exists") from None
        return RelayNetwork(int(new_id), network)

    def delete(self, network_id: int) -> bool:
        if not valid_entry_id(network_id):
            return False
        with self.db.begin() as conn:
            gone = conn.execute(delete(relay_networks).where(
                relay_networks.c.id == network_id)).rowcount
            if gone:
                bump_generation(conn)
        return bool(gone)


def networks(conn: Connection) -> tuple[Network, ...]:
    """Every stored network, parsed (for the receiver's cache)."""
    return tuple(ipaddress.ip_network(text) for text in conn.scalars(
        select(relay_networks.c.network)))
