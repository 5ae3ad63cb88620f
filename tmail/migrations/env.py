"""Alembic's environment for tmail: the connection and transaction are the caller's.

:func:`tmail.migrations.upgrade` passes a connection already in a transaction (holding the
migration lock); Alembic runs every revision inside it, so that a failure leaves the schema
as it was. There is no offline (``--sql``) mode: tmail migrates its own database at start-up.
"""

from alembic import context

import tmail.directory.tables  # registers the directory tables on the metadata
import tmail.dkim.keys  # registers the dkim_keys table
import tmail.users_table  # noqa: F401  (registers the users table on the metadata)
from tmail.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("tmail's migrations run on a connection: see tmail/migrations/__init__.py")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
