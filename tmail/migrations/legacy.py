"""Adoption of a ``users.db`` made before Alembic, by the ``sqlite3`` code of tmail.

That code counted its migrations in SQLite's ``PRAGMA user_version``: 1 made the users table,
2 added ``login_key`` under a unique index. Version 2 is the Alembic baseline (revision
``0001``); a version-1 database gets the key here first, then both are stamped.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

log = logging.getLogger(__name__)

_users = sa.table("users", sa.column("id"), sa.column("login"), sa.column("login_key"))


def is_pre_alembic(conn: Connection) -> bool:
    tables = set(sa.inspect(conn).get_table_names())
    return "users" in tables and "alembic_version" not in tables


def bring_to_baseline(conn: Connection) -> None:
    version = (conn.exec_driver_sql("PRAGMA user_version").scalar()
               if conn.dialect.name == "sqlite" else 2)
    if version is not None and version < 2:
        _add_login_key(conn)


def _add_login_key(conn: Connection) -> None:
    """``login_key`` under a unique index, computed in Python (SQLite's ``lower()`` knows
    only ASCII, and the key's domain is the IDNA form).

    Two logins differing only by case could exist before: the oldest gets the key (as the
    old case-insensitive look-ups found it first); the others keep ``NULL`` and stay
    reachable by their exact spelling, so that nothing is lost and the admin can delete them.
    """
    from tmail.users import login_key

    op = Operations(MigrationContext.configure(conn))
    op.add_column("users", sa.Column("login_key", sa.Text))
    seen: set[str] = set()
    for user_id, login in conn.execute(sa.select(_users.c.id, _users.c.login)
                                       .order_by(_users.c.id)).all():
        key = login_key(login)
        if key in seen:
            log.warning("users: login %r differs only by case from an older one: reachable"
                        " by its exact spelling only; delete one of them", login)
            continue
        seen.add(key)
        conn.execute(sa.update(_users).where(_users.c.id == user_id).values(login_key=key))
    op.create_index("users_login_key", "users", ["login_key"], unique=True)
