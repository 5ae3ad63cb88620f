"""The ops command line: one module per subcommand, each with ``register(subparsers)``.

Library code raises; only :func:`main` turns errors into a message and an exit code, so that
every command is testable by calling ``main([...])``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tmail import config as tmail_config
from tmail.cli import aliases, dkim, domains, queue, relayips, routes, sendmail, users
from tmail.cli.owner import EX_NOPERM, Caller, OwnerError, become_owner
from tmail.config import ConfigError
from tmail.db import DatabaseUnavailable
from tmail.directory.errors import DirectoryError

COMMANDS = (users, domains, aliases, relayips, routes, dkim, queue, sendmail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tmail", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    args = parser.parse_args(argv)
    try:
        args.config = tmail_config.load()
        args.caller = Caller.current()  # who ran us, for sendmail's trace and default sender
        become_owner(args.config.queue_dir)  # before anything reads or writes the data dir
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"tmail: configuration: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    except DirectoryError as exc:
        print(f"tmail: {exc.msg}: {exc.raw}", file=sys.stderr)
        return os.EX_DATAERR if exc.status == 422 else 1  # a value no entry may have
    except DatabaseUnavailable as exc:  # temporary: a script may run the command again
        print(f"tmail: {exc}", file=sys.stderr)
        return os.EX_TEMPFAIL
    except OwnerError as exc:
        print(f"tmail: {exc}", file=sys.stderr)
        return EX_NOPERM
    except (OSError, ValueError) as exc:
        print(f"tmail: {exc}", file=sys.stderr)
        return 1
