"""The directory's tables, declared once (built by the Alembic revision ``0101_directory``).

Flags are booleans; optional texts are ``""`` rather than NULL where they take part in a
unique constraint (SQL lets any number of NULLs through one), so that the same route cannot
be stored twice.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from tmail.db import metadata

# Ids are SQL INTEGERs (32 bits on PostgreSQL): a larger one in a URL names no entry, and is
# never sent to the database (where it would be an error, not an empty result).
MAX_ENTRY_ID = 2**31 - 1


def valid_entry_id(entry_id: int) -> bool:
    return 0 < entry_id <= MAX_ENTRY_ID

domains = Table(
    "domains", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),  # lower-case A-label
    Column("local", Boolean, nullable=False),
    UniqueConstraint("name"),
)

aliases = Table(
    "aliases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address_key", Text, nullable=False),  # Address.key, or "@<A-label domain>"
    Column("address", Text, nullable=False),  # as the admin gave it (normalised domain)
    Column("domain", Text, nullable=False),  # A-label: what uses a domain
    Column("pipe", Text, nullable=False, server_default=""),
    Column("mini_list", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("address_key"),
    Index("aliases_domain", "domain"),
)

alias_targets = Table(
    "alias_targets", metadata,
    Column("alias_id", Integer, ForeignKey("aliases.id", ondelete="CASCADE"),
           primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("target", Text, nullable=False),  # local@domain or @domain
)

relay_networks = Table(
    "relay_networks", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("network", Text, nullable=False),  # ipaddress' compressed CIDR form
    UniqueConstraint("network"),
)

routes = Table(
    "routes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", Text, nullable=False),  # A-label destination domain, or "*"
    Column("mail_from", Text, nullable=False, server_default=""),  # Address.key or ""
    Column("auth_user", Text, nullable=False, server_default=""),  # login key or ""
    Column("remote_host", Text, nullable=False),
    Column("remote_port", Integer, nullable=False, server_default="25"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("starttls", Text, nullable=False, server_default="may"),
    Column("auth_login", Text, nullable=False, server_default=""),
    # The smart host needs the password itself: it is kept as given, like Postfix's
    # sasl_passwd, and never leaves the store but towards that host.
    Column("auth_password", Text, nullable=False, server_default=""),
    Column("allow_plaintext_auth", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("host", "mail_from", "auth_user", "remote_host", "remote_port"),
    Index("routes_host", "host"),
)
