"""``python -m tmail dkim add|show|list|del DOMAIN``: DKIM keys without the API (tmail's
``dkim enable|getdnsrecord|disable``). No command prints a private key."""

from __future__ import annotations

import argparse
import json
import sys

from tmail.db import open_migrated
from tmail.dkim.keys import ALGORITHMS, DkimKey, KeyStore


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(open_migrated(args.config), args.config.local_domains)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("dkim", help="DKIM keys: add, show, list, delete")
    commands = parser.add_subparsers(dest="dkim_command", required=True)
    add = commands.add_parser("add", help="make a key for a local domain (signs from now on)")
    add.add_argument("domain")
    add.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="rsa")
    add.add_argument("--selector", help="default: tmailYYYYMM")
    add.set_defaults(handler=add_key)
    show = commands.add_parser("show", help="the active key's DNS record")
    show.add_argument("domain")
    show.set_defaults(handler=show_key)
    listing = commands.add_parser("list", help="every key")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /dkim gives")
    listing.set_defaults(handler=list_keys)
    delete = commands.add_parser("del", help="delete a domain's keys (stops signing)")
    delete.add_argument("domain")
    delete.set_defaults(handler=delete_keys)


def zone_line(key: DkimKey) -> str:
    """The record as a line of a BIND zone file."""
    value = key.dns_value if key.dns_value.startswith('"') else f'"{key.dns_value}"'
    return f"{key.dns_name}. IN TXT ( {value} )"


def as_json(key: DkimKey) -> dict[str, object]:
    return {"Domain": key.domain, "Selector": key.selector, "Algorithm": key.algorithm,
            "PublicKey": key.public_key, "DnsName": key.dns_name, "DnsValue": key.dns_value,
            "CreatedAt": key.created_at.isoformat(), "Active": key.active}


def add_key(args: argparse.Namespace) -> int:
    key = _store(args).create(args.domain, args.algorithm, args.selector)
    print(f"created {key.algorithm} key {key.selector} for {key.domain}; publish:")
    print(zone_line(key))
    return 0


def show_key(args: argparse.Namespace) -> int:
    key = _store(args).get(args.domain)
    if key is None:
        print(f"tmail: {args.domain} has no DKIM key", file=sys.stderr)
        return 1
    print(zone_line(key))
    return 0


def list_keys(args: argparse.Namespace) -> int:
    keys = _store(args).list()
    if args.json:
        print(json.dumps([as_json(key) for key in keys]))
        return 0
    for key in keys:
        state = "active" if key.active else "old"
        print(f"{key.domain} {key.selector} {key.algorithm} {state} "
              f"{key.created_at:%Y-%m-%d}")
    return 0


def delete_keys(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.domain):
        print(f"tmail: {args.domain} has no DKIM key", file=sys.stderr)
        return 1
    return 0
