"""The schema's history as Alembic revisions, applied at start-up by every process.

Run through Alembic's public API on a connection the caller has already put in a transaction
(:meth:`tmail.db.Database.migrate`), so no ``alembic.ini`` is needed to run tmail. To write a
new revision, from the repository root::

    .venv/bin/python -m tmail.migrations revision -m "what changes"

and fill in its ``upgrade()`` (``op.*`` calls; ``render_as_batch`` is on, so that column
changes work on SQLite too).

Race-free when several processes or nodes start at once: everything happens in one
transaction that first takes the migration lock, which is SQLite's write lock
(``BEGIN IMMEDIATE``, taken by :meth:`~tmail.db.Database.begin`) or PostgreSQL's transaction
advisory lock. The others wait for it, then find the schema current and do nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, select

from tmail.migrations import legacy

log = logging.getLogger(__name__)

BASELINE = "0001"
# pg_advisory_xact_lock's key for "tmail migrations" (any constant that nothing else uses).
_PG_LOCK_KEY = 0x746D61696C4D4947


def alembic_config(conn: Connection | None = None) -> AlembicConfig:
    """Alembic's configuration, made here: scripts in this package, our connection."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config


def upgrade(conn: Connection) -> None:
    """Take the migration lock, adopt a database made before Alembic, upgrade to the head.

    One line is logged when something changed (:meth:`tmail.db.Database.migrate` keeps
    Alembic's own INFO lines, ten at every start of every process, out of the log).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
    config = alembic_config(conn)
    before = MigrationContext.configure(conn).get_current_revision()
    if legacy.is_pre_alembic(conn):
        legacy.bring_to_baseline(conn)
        command.stamp(config, BASELINE)
        before = "tmail's sqlite3 schema"
    command.upgrade(config, "head")
    after = MigrationContext.configure(conn).get_current_revision()
    if after != before:
        log.info("database %s migrated from %s to revision %s",
                 conn.engine.url.render_as_string(hide_password=True), before or "empty", after)
