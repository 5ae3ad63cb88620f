"""``python -m tmail.migrations revision -m "..."``: Alembic's own commands, for developers.

tmail applies its revisions by itself at start-up; this only gives the ``alembic`` command line
the configuration that :func:`tmail.migrations.alembic_config` builds, on the database that
``TMAIL_DATABASE_URL`` names (migrated to the head first, as any tmail process would).
"""

from __future__ import annotations

import sys

from alembic.config import CommandLine

from tmail import config as tmail_config
from tmail.db import Database
from tmail.migrations import alembic_config


def main(argv: list[str] | None = None) -> int:
    cli = CommandLine(prog="python -m tmail.migrations")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    database = Database(tmail_config.load().database)
    database.migrate()  # at the head first, as tmail keeps it (and --autogenerate needs)
    with database.begin() as conn:
        config = alembic_config(conn)
        config.cmd_opts = options
        cli.run_cmd(config, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
