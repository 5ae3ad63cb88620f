"""``python -m tmail domains list|add|del``: tmail's ``rcpthost`` without the API."""

from __future__ import annotations

import argparse
import json
import sys

from tmail.db import open_migrated
from tmail.directory.domains import DomainStore


def _store(args: argparse.Namespace) -> DomainStore:
    return DomainStore(open_migrated(args.config))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("domains", help="list, add or delete domains")
    commands = parser.add_subparsers(dest="domains_command", required=True)
    listing = commands.add_parser("list", help="list domains")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /domains gives")
    listing.set_defaults(handler=list_domains)
    add = commands.add_parser("add", help="add a domain (local unless --relay)")
    add.add_argument("name")
    add.add_argument("--relay", action="store_true",
                     help="accept its mail from anyone and relay it (backup MX)")
    add.set_defaults(handler=add_domain)
    delete = commands.add_parser("del", help="delete a domain no user or alias uses")
    delete.add_argument("name")
    delete.set_defaults(handler=delete_domain)


def list_domains(args: argparse.Namespace) -> int:
    domains = _store(args).list()
    if args.json:
        print(json.dumps([{"Id": d.id, "Name": d.name, "Local": d.local} for d in domains]))
    for domain in [] if args.json else domains:
        print(f"{domain.id:6d} {'local' if domain.local else 'relay':5} {domain.name}")
    return 0


def add_domain(args: argparse.Namespace) -> int:
    domain = _store(args).create(args.name, local=not args.relay)
    print(f"created {domain.name} (Id {domain.id}, {'local' if domain.local else 'relay'})")
    return 0


def delete_domain(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.name):
        print(f"tmail: no such domain {args.name}", file=sys.stderr)
        return 1
    return 0
