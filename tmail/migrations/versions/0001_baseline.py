"""Baseline: the users table as tmail made it before Alembic (SQLite user_version 2).

Revision ID: 0001
Revises:
Create Date: 2026-12-02

A database created by that code is stamped with this revision at start-up, after
:mod:`tmail.migrations.legacy` brought an older one (user_version 1) up to it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("login", sa.Text, nullable=False),
        sa.Column("passwd", sa.Text, nullable=False),
        sa.Column("dove_passwd", sa.Text, nullable=False),
        sa.Column("active", sa.Text, nullable=False, server_default="Y"),
        sa.Column("auth_relay", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("have_mailbox", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("mailbox_quota", sa.Text, nullable=False, server_default=""),
        sa.Column("home", sa.Text, nullable=False, server_default=""),
        sa.Column("is_catchall", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("domain", sa.Text, nullable=False, server_default=""),
        sa.Column("login_key", sa.Text),
        sa.UniqueConstraint("login", name="uq_users_login"),
        sqlite_autoincrement=True,
    )
    op.create_index("users_domain", "users", ["domain"])
    op.create_index("users_one_catchall", "users", ["domain"], unique=True,
                    sqlite_where=sa.text("is_catchall = 1"),
                    postgresql_where=sa.text("is_catchall = 1"))
    op.create_index("users_login_key", "users", ["login_key"], unique=True)


def downgrade() -> None:
    op.drop_table("users")
