"""The listeners, and what the submission ports (587, 465) demand of mail clients.

The receiver serves up to three listeners in each worker process, with one handler and one
set of limits: the MX (``TMAIL_SMTP_BIND``, today's rules), submission with STARTTLS
(``TMAIL_SUBMISSION_BIND``, RFC 6409) and submission over TLS from the first byte
(``TMAIL_SUBMISSIONS_BIND``, RFC 8314). On the two submission listeners a client must log in
before MAIL, every logged-in user may relay (that is what submission is for), and a user
may only send as themselves: the envelope sender and every address of ``From:`` must be
owned by the login (Postfix's ``reject_sender_login_mismatch``).

Who owns an address is the directory's answer (:func:`owns`): the login itself, or an address
whose alias expansion names the login (an alias, nested ones, a domain alias, a mini-list the
user is on), which is how Postfix sites build ``smtpd_sender_login_maps`` from their virtual
alias maps: whoever an alias delivers to may send as it. A domain's catchall user does not
own the addresses it catches: those are strays (typos, guesses), not addresses of its own.
"""

from __future__ import annotations

import email.policy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from tmail.address import Address, AddressError
from tmail.config import Config, HostPort
from tmail.db import DatabaseUnavailable
from tmail.directory.expansion import ExpansionError, Lookup, expand
from tmail.directory.lookup import Directory
from tmail.text import printable
from tmail.users import login_key

log = logging.getLogger("smtp_receiver")

NOT_OWNED = "553 5.7.1 Sender address rejected: not owned by user"
LOOKUP_FAILED = "451 4.3.0 Temporary lookup failure, try again later"


@dataclass(frozen=True)
class Listener:
    """One listening address and the rules of its sessions."""

    name: str  # the variable that set it, for log lines and errors
    bind: HostPort
    submission: bool = False  # AUTH before MAIL, sender ownership, relaying for every user
    implicit_tls: bool = False  # TLS from the first byte (465), no STARTTLS

    def __str__(self) -> str:
        return f"{self.bind} ({self.name})"


def listeners(config: Config) -> list[Listener]:
    """The MX listener and the submission listeners that are configured."""
    found = [Listener("TMAIL_SMTP_BIND", config.smtp_bind)]
    if config.submission_bind is not None:
        found.append(Listener("TMAIL_SUBMISSION_BIND", config.submission_bind, submission=True))
    if config.submissions_bind is not None:
        found.append(Listener("TMAIL_SUBMISSIONS_BIND", config.submissions_bind,
                              submission=True, implicit_tls=True))
    return found


def owns(lookup: Lookup, key: str, address: Address, postmaster: Address | None = None) -> bool:
    """The login whose :func:`tmail.users.login_key` is ``key`` may send as ``address``."""
    if address.key == key:
        return True
    if not lookup.is_local(address):
        return False  # nobody here receives it: it belongs to nobody here
    try:
        targets = expand(address, lookup, postmaster)
    except ExpansionError:
        return False
    return any(not target.pipe and login_key(target.rcpt_to) == key for target in targets)


class SenderRules:
    """The sender checks of the submission listeners, each answering ``None`` (allowed) or
    the reply refusing it. Blocking: call them from a worker thread. A database that cannot
    answer gets ``451 4.3.0``: the client tries again, nothing is bounced."""

    def __init__(self, config: Config, directory: Directory) -> None:
        self._directory = directory
        self._postmaster = (Address.parse(config.postmaster, allow_utf8=True)
                            if config.postmaster else None)

    def check_envelope(self, login: str, sender: Address | None) -> str | None:
        """MAIL FROM: the user's own address or one delivered to them. The null sender is
        allowed (an MDN or a vacation reply from a client: RFC 8098 §2.1); its ``From:`` is
        checked all the same."""
        return None if sender is None else self._check(login, [sender])

    def check_from(self, login: str, values: list[bytes]) -> str | None:
        """End of DATA: every address of every ``From:`` field (a message without one has
        nothing to check; a ``From:`` that names no address tmail can read is refused)."""
        if not values:
            return None
        addresses = header_addresses(values)
        return NOT_OWNED if addresses is None else self._check(login, addresses)

    def _check(self, login: str, addresses: Iterable[Address]) -> str | None:
        """One connection for all of them, each distinct address once (a ``From:`` of a
        thousand copies costs one look-up)."""
        key = login_key(login)
        unique = {address.key: address for address in addresses}
        if all(found == key for found in unique):
            return None  # the common case: the login itself, no database needed
        try:
            with self._directory.reading() as reader:
                owned = all(owns(reader, key, address, self._postmaster)
                            for address in unique.values())
        except DatabaseUnavailable as exc:
            log.warning("sender check for %s: %s", printable(login), exc)
            return LOOKUP_FAILED
        return None if owned else NOT_OWNED


def header_addresses(values: list[bytes]) -> list[Address] | None:
    """Every address of the ``From:`` fields ``values`` (raw, unfolded), or ``None`` when one
    is not an address tmail can check (no address at all, an undecodable or malformed one):
    a field nobody can be shown to own is not owned."""
    found: list[Address] = []
    for raw in values:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        header = email.policy.SMTPUTF8.header_factory("From", text)
        mailboxes = getattr(header, "addresses", ())
        if not mailboxes:
            return None
        for mailbox in mailboxes:
            try:
                found.append(Address.parse(mailbox.addr_spec, allow_utf8=True))
            except AddressError:
                return None
    return found or None
