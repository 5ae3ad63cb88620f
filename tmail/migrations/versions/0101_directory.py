"""The mail directory: domains, aliases (and their targets), relay networks, routes.

Revision ID: 0101
Revises: 0002
Create Date: 2026-12-02

The tables of :mod:`tmail.directory.tables`, spelled out as they are at this revision (a
revision never imports the current model, which later ones may change).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0101"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("local", sa.Boolean, nullable=False),
        sa.UniqueConstraint("name", name="uq_domains_name"),
    )
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address_key", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("domain", sa.Text, nullable=False),
        sa.Column("pipe", sa.Text, nullable=False, server_default=""),
        sa.Column("mini_list", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("address_key", name="uq_aliases_address_key"),
    )
    op.create_index("aliases_domain", "aliases", ["domain"])
    op.create_table(
        "alias_targets",
        sa.Column("alias_id", sa.Integer,
                  sa.ForeignKey("aliases.id", ondelete="CASCADE",
                                name="fk_alias_targets_alias_id_aliases"),
                  primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("target", sa.Text, nullable=False),
    )
    op.create_table(
        "relay_networks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("network", sa.Text, nullable=False),
        sa.UniqueConstraint("network", name="uq_relay_networks_network"),
    )
    op.create_table(
        "routes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("mail_from", sa.Text, nullable=False, server_default=""),
        sa.Column("auth_user", sa.Text, nullable=False, server_default=""),
        sa.Column("remote_host", sa.Text, nullable=False),
        sa.Column("remote_port", sa.Integer, nullable=False, server_default=sa.text("25")),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("starttls", sa.Text, nullable=False, server_default="may"),
        sa.Column("auth_login", sa.Text, nullable=False, server_default=""),
        sa.Column("auth_password", sa.Text, nullable=False, server_default=""),
        sa.Column("allow_plaintext_auth", sa.Boolean, nullable=False,
                  server_default=sa.false()),
        sa.UniqueConstraint("host", "mail_from", "auth_user", "remote_host", "remote_port",
                            name="uq_routes_host_mail_from_auth_user_remote_host_remote_port"),
    )
    op.create_index("routes_host", "routes", ["host"])


def downgrade() -> None:
    for table in ("routes", "relay_networks", "alias_targets", "aliases", "domains"):
        op.drop_table(table)
