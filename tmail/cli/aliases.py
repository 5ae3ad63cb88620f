"""``python -m tmail aliases list|add|del``: tmail's ``alias`` without the API."""

from __future__ import annotations

import argparse
import json
import sys

from tmail.db import open_migrated
from tmail.directory.aliases import AliasStore


def _store(args: argparse.Namespace) -> AliasStore:
    return AliasStore(open_migrated(args.config), args.config.local_domains)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("aliases", help="list, add or delete aliases")
    commands = parser.add_subparsers(dest="aliases_command", required=True)
    listing = commands.add_parser("list", help="list aliases")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /aliases gives")
    listing.set_defaults(handler=list_aliases)
    add = commands.add_parser("add", help="add an alias: ADDRESS (local@domain or @domain) "
                                          "and its targets")
    add.add_argument("address")
    add.add_argument("deliver_to", nargs="*", metavar="TARGET",
                     help="local@domain, or @domain to keep the local part")
    add.add_argument("--pipe", default="", help="a command line, e.g. '/usr/bin/cmd arg'")
    add.add_argument("--mini-list", action="store_true",
                     help="the alias's address becomes the sender (bounces go to the list)")
    add.set_defaults(handler=add_alias)
    delete = commands.add_parser("del", help="delete an alias")
    delete.add_argument("address")
    delete.set_defaults(handler=delete_alias)


def list_aliases(args: argparse.Namespace) -> int:
    aliases = _store(args).list()
    if args.json:
        print(json.dumps([{"Id": a.id, "Address": a.address, "Local": a.local,
                           "Domain": a.domain, "DeliverTo": list(a.deliver_to),
                           "Pipe": a.pipe, "MiniList": a.mini_list} for a in aliases]))
        return 0
    for alias in aliases:
        targets = [*alias.deliver_to, *([f"|{alias.pipe}"] if alias.pipe else [])]
        flag = "L" if alias.mini_list else "-"
        print(f"{alias.id:6d} {flag} {alias.address}: {', '.join(targets)}")
    return 0


def add_alias(args: argparse.Namespace) -> int:
    alias = _store(args).create(args.address, args.deliver_to, args.pipe, args.mini_list)
    print(f"created {alias.address} (Id {alias.id})")
    return 0


def delete_alias(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.address):
        print(f"tmail: no such alias {args.address}", file=sys.stderr)
        return 1
    return 0
