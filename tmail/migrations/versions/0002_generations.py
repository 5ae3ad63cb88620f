"""Generation counters: what a process's cache of the directory compares against.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Replaces SQLite's ``PRAGMA data_version``, which only one SQLite file can give: the counter
row moves in the same transaction as every write to the users, on any node.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    generations = op.create_table(
        "generations",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(generations, [{"name": "directory", "value": 0}])


def downgrade() -> None:
    op.drop_table("generations")
