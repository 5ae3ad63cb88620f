"""Trusted submitters: whose mail this server vouches for (and so signs with DKIM).

An MSA signs what its own users send, not what arrives from the internet: a trusted
submitter is an authenticated user (SMTP AUTH, on any listener), a local program (``sendmail``
queues with the client address :data:`LOCAL_CLIENT`), or a client in a relay network
(``TMAIL_RELAY_NETWORKS`` and the directory's: an application server, as OpenDKIM's
``InternalHosts``). Anyone else's ``From:`` is a claim, never signed, whatever it says.
"""

from __future__ import annotations

from collections.abc import Callable

from tmail.queue import Envelope

LOCAL_CLIENT = "local"  # the client address tmail.sendmail queues with (no SMTP client)


def authenticated_or_local(envelope: Envelope) -> bool:
    """Trusted without a look-up: the envelope says who submitted it."""
    return bool(envelope.auth_user) or envelope.client_addr == LOCAL_CLIENT


def is_trusted(envelope: Envelope, in_relay_networks: Callable[[str], bool]) -> bool:
    """``envelope`` comes from a trusted submitter (``in_relay_networks`` is asked last,
    only for an anonymous client: it may be a database look-up)."""
    return authenticated_or_local(envelope) or (
        bool(envelope.client_addr) and in_relay_networks(envelope.client_addr))
