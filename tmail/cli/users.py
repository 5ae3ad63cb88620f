"""``python -m tmail users list|add|del``: the users store without the API."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tmail.users import InvalidLogin, UserError, UserStore, open_store


def _store(args: argparse.Namespace) -> UserStore:
    """A command, unlike a server, stops at once (EX_TEMPFAIL) when the database is away."""
    return open_store(args.config, lazy=False)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("users", help="list, add or delete users")
    commands = parser.add_subparsers(dest="users_command", required=True)
    listing = commands.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /users gives")
    listing.set_defaults(handler=list_users)
    add = commands.add_parser("add", help="add a user")
    add.add_argument("login")
    add.add_argument("--password", required=True)
    add.add_argument("--mailbox", action="store_true")
    add.add_argument("--relay", action="store_true")
    add.add_argument("--quota", default=None)
    add.add_argument("--catchall", action="store_true")
    add.set_defaults(handler=add_user)
    delete = commands.add_parser("del", help="delete a user (the Maildir stays)")
    delete.add_argument("login")
    delete.set_defaults(handler=delete_user)


def list_users(args: argparse.Namespace) -> int:
    users = _store(args).list()
    if args.json:
        print(json.dumps([{"Id": u.id, "Login": u.login, "Active": u.active,
                           "AuthRelay": u.auth_relay, "HaveMailbox": u.have_mailbox,
                           "MailboxQuota": u.mailbox_quota, "Home": u.home} for u in users]))
        return 0
    for user in users:
        flags = "".join(("M" if user.have_mailbox else "-", "R" if user.auth_relay else "-",
                         "C" if user.is_catchall else "-"))
        print(f"{user.id:6d} {flags} {user.mailbox_quota or '-':>6} {user.login}")
    return 0


def add_user(args: argparse.Namespace) -> int:
    try:
        user = _store(args).create(args.login, args.password, auth_relay=args.relay,
                               have_mailbox=args.mailbox, mailbox_quota=args.quota,
                               is_catchall=args.catchall)
    except UserError as exc:
        print(f"tmail: {exc.msg}: {exc.raw}", file=sys.stderr)
        return os.EX_DATAERR if isinstance(exc, InvalidLogin) else 1
    print(f"created {user.login} (Id {user.id})")
    return 0


def delete_user(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.login):
        print(f"tmail: no such user {args.login}")
        return 1
    return 0
