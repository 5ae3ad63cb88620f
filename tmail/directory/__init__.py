"""The mail directory on the SQL layer: domains, aliases, relay networks and routes.

One module per concept, each with its table (registered on :data:`tmail.db.metadata`, built by
the Alembic revision ``0101_directory``) and its store; :mod:`.lookup` is what the SMTP
receiver reads, :mod:`.expansion` the alias walk over it. Every write bumps the ``directory``
generation in its own transaction (:func:`tmail.db.bump_generation`), so that a process caching
what it derived from these rows sees the change at its next look-up, on every node.
"""
