"""``python -m tmail routes list|add|del``: tmail's ``routes`` without the API.

The smart-host password is read from ``--auth-password-file`` (or standard input with
``-``), never from the command line, where ``ps`` and the shell history would show it.
"""

from __future__ import annotations

import argparse
import json
import sys

from tmail.db import open_migrated
from tmail.directory.routes import STARTTLS_MODES, RouteStore, make_route
from tmail.routes import Route


def _store(args: argparse.Namespace) -> RouteStore:
    return RouteStore(open_migrated(args.config), args.config)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("routes", help="list, add or delete routes")
    commands = parser.add_subparsers(dest="routes_command", required=True)
    listing = commands.add_parser("list", help="list routes (TMAIL_ROUTES last, as env)")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /routes gives")
    listing.set_defaults(handler=list_routes)
    add = commands.add_parser("add", help="add a route: HOST (a domain or *) via REMOTE_HOST")
    add.add_argument("host")
    add.add_argument("remote_host")
    add.add_argument("--port", type=int, default=25)
    add.add_argument("--priority", type=int, default=0, help="lower first; equal share load")
    add.add_argument("--starttls", choices=STARTTLS_MODES, default="may")
    add.add_argument("--mail-from", help="only for mail from this sender")
    add.add_argument("--auth-user", help="only for mail from this authenticated user")
    add.add_argument("--auth-login", help="AUTH login at the smart host")
    add.add_argument("--auth-password-file", type=argparse.FileType("r"),
                     help="file holding the AUTH password ('-': standard input)")
    add.add_argument("--allow-plaintext-auth", action="store_true",
                     help="AUTH even without TLS (with --starttls none only)")
    add.set_defaults(handler=add_route)
    delete = commands.add_parser("del", help="delete a stored route by Id")
    delete.add_argument("id", type=int)
    delete.set_defaults(handler=delete_route)


def _json(route: Route) -> dict[str, object]:
    return {"Id": route.id, "Host": route.host, "MailFrom": route.mail_from,
            "AuthUser": route.auth_user, "RemoteHost": route.remote_host,
            "RemotePort": route.remote_port, "Priority": route.priority,
            "Starttls": route.starttls, "AuthLogin": route.auth_login,
            "AllowPlaintextAuth": route.allow_plaintext_auth, "Bootstrap": route.id is None}


def list_routes(args: argparse.Namespace) -> int:
    routes = _store(args).list()
    if args.json:
        print(json.dumps([_json(route) for route in routes]))
        return 0
    for route in routes:
        ident = f"{route.id:6d}" if route.id is not None else "   env"
        match = "".join(f" from={value}" for value in (route.mail_from,) if value) + "".join(
            f" user={value}" for value in (route.auth_user,) if value)
        auth = f" auth={route.auth_login}" if route.auth_login else ""
        print(f"{ident} {route.host}{match} -> {route.remote_host}:{route.remote_port} "
              f"priority={route.priority} starttls={route.starttls}{auth}")
    return 0


def add_route(args: argparse.Namespace) -> int:
    password = None
    if args.auth_password_file is not None:
        with args.auth_password_file as source:
            password = source.readline().rstrip("\r\n")
    route = _store(args).create(make_route(
        args.host, args.remote_host, remote_port=args.port, priority=args.priority,
        starttls=args.starttls, mail_from=args.mail_from, auth_user=args.auth_user,
        auth_login=args.auth_login, auth_password=password,
        allow_plaintext_auth=args.allow_plaintext_auth))
    print(f"created route {route.id}: {route.host} -> {route.remote_host}:{route.remote_port}")
    return 0


def delete_route(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.id):
        print(f"tmail: no such route {args.id}", file=sys.stderr)
        return 1
    return 0
