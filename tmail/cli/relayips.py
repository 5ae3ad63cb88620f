"""``python -m tmail relayips list|add|del``: tmail's ``relayip`` without the API."""

from __future__ import annotations

import argparse
import json
import sys

from tmail.db import open_migrated
from tmail.directory.relayips import RelayNetworkStore


def _store(args: argparse.Namespace) -> RelayNetworkStore:
    return RelayNetworkStore(open_migrated(args.config))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("relayips", help="list, add or delete relay networks")
    commands = parser.add_subparsers(dest="relayips_command", required=True)
    listing = commands.add_parser("list", help="list relay networks")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /relayips gives")
    listing.set_defaults(handler=list_networks)
    add = commands.add_parser("add", help="add a relay network (an IP or a CIDR)")
    add.add_argument("network")
    add.set_defaults(handler=add_network)
    delete = commands.add_parser("del", help="delete a relay network by Id")
    delete.add_argument("id", type=int)
    delete.set_defaults(handler=delete_network)


def list_networks(args: argparse.Namespace) -> int:
    networks = _store(args).list()
    if args.json:
        print(json.dumps([{"Id": n.id, "Network": n.network} for n in networks]))
        return 0
    for network in networks:
        print(f"{network.id:6d} {network.network}")
    return 0


def add_network(args: argparse.Namespace) -> int:
    network = _store(args).create(args.network)
    print(f"created {network.network} (Id {network.id})")
    return 0


def delete_network(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.id):
        print(f"tmail: no such relay network {args.id}", file=sys.stderr)
        return 1
    return 0
