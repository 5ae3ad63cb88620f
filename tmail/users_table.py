"""The ``users`` table, as the store queries it (the revisions in tmail/migrations build it).

The column names are also an interface: Dovecot's ``dovecot-sql.conf.ext`` reads ``login``,
``dove_passwd``, ``active``, ``have_mailbox``, ``home`` and ``mailbox_quota`` straight from
this table. The flags are integers 0/1, not booleans, so that those queries
(``have_mailbox = 1``) are the same text on SQLite and PostgreSQL.

``login`` keeps the spelling the admin gave; ``login_key`` (lower case, A-label domain:
:func:`tmail.users.login_key`) is what look-ups go through, under a unique index, which makes
logins case-insensitive on both engines without relying on either's collations. It is NULL
only for rows from before it existed that differed from an older login by case alone.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, Table, Text, UniqueConstraint, text

from tmail.db import metadata

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("login", Text, nullable=False),
    Column("passwd", Text, nullable=False),
    Column("dove_passwd", Text, nullable=False),
    Column("active", Text, nullable=False, server_default="Y"),
    Column("auth_relay", Integer, nullable=False, server_default=text("0")),
    Column("have_mailbox", Integer, nullable=False, server_default=text("0")),
    Column("mailbox_quota", Text, nullable=False, server_default=""),
    Column("home", Text, nullable=False, server_default=""),
    Column("is_catchall", Integer, nullable=False, server_default=text("0")),
    Column("domain", Text, nullable=False, server_default=""),
    Column("login_key", Text),
    UniqueConstraint("login"),
    Index("users_domain", "domain"),
    Index("users_one_catchall", "domain", unique=True,
          sqlite_where=text("is_catchall = 1"), postgresql_where=text("is_catchall = 1")),
    Index("users_login_key", "login_key", unique=True),
    sqlite_autoincrement=True,  # as before: an Id is never given to a second user
)
