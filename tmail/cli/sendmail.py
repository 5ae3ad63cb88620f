"""``python -m tmail sendmail [-f sender] [-t] [rcpt ...] < message``."""

from __future__ import annotations

import argparse
import sys

from tmail.address import Address
from tmail.db import DatabaseUnavailable, open_database
from tmail.directory.lookup import Directory
from tmail.dkim.signing import DkimSigner
from tmail.queue import QueueStore, QueueWriteError
from tmail.sendmail import SendmailError, submit

EX_USAGE = 64
EX_TEMPFAIL = 75


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("sendmail", help="queue a message from stdin (local programs)")
    parser.add_argument("-f", dest="sender", help="envelope sender ('' for the null sender)")
    parser.add_argument("-t", dest="from_headers", action="store_true",
                        help="take recipients from To, Cc and Bcc (Bcc is removed)")
    parser.add_argument("-i", "-oi", dest="ignore_dots", action="store_true",
                        help="accepted for compatibility: a lone dot never ends the message")
    parser.add_argument("recipients", nargs="*")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = args.config
    raw = sys.stdin.buffer.read()
    database = open_database(config)
    directory = Directory(database, config)
    postmaster = Address.parse(config.postmaster, allow_utf8=True) if config.postmaster else None
    try:
        database.migrate()
        store = QueueStore(config.queue_dir, node=config.node,
                           signer=DkimSigner(database, directory))
        submit(store, raw, recipients=args.recipients,
               sender=args.sender, from_headers=args.from_headers, hostname=config.hostname,
               caller_uid=args.caller.uid, caller_login=args.caller.login,
               resolve=lambda rcpt: directory.resolve(rcpt, postmaster))
    except DatabaseUnavailable as exc:
        print(f"sendmail: cannot expand aliases now: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except SendmailError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    except QueueWriteError as exc:
        print(f"sendmail: cannot queue the message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return 0
