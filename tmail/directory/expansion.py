"""Who a local address is: the RCPT decision and alias expansion, over a :class:`Lookup`.

Aliases are expanded when the message is queued, as Postfix's cleanup expands virtual
aliases: one queue recipient per final target (duplicates removed), each keeping the address
the client gave (``OrigRcpt``). The same walk decides RCPT, so that the receiver never accepts
an address it would have to bounce as unknown or as a loop.

For one address in a local domain, the first that matches wins (the issue's order, which is
Postfix's ``virtual_alias_maps`` before ``virtual_mailbox_maps`` with ``@domain`` entries
tried last):

1. an exact alias (``info@example.org``);
2. a user with a mailbox;
3. for ``postmaster@`` (any case): ``TMAIL_POSTMASTER`` (RFC 5321 §4.5.1);
4. a domain alias (``@example.org``): a target ``@other.example`` keeps the local part, a
   full address takes every address of the domain (a catch-all alias). A rewritten address
   must itself exist, else the domain alias does not cover it (no backscatter for every
   guess);
5. the domain's catchall user.

Nested aliases are followed up to :data:`MAX_DEPTH` levels. An alias that names itself is
delivered to that address (Postfix's rule: ``a@x -> a@x, b@y`` keeps a copy); one that comes
back to an address higher up the chain is a loop (:class:`AliasLoop`). A target in a local
domain named explicitly by an alias but unknown is kept as a record, which the runner bounces
(``5.1.1``) as Postfix does: the sender learns of it, the other targets still get the mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tmail.address import Address, AddressError
from tmail.queue import Target

MAX_DEPTH = 10
MAX_TARGETS = 1000  # Postfix's virtual_alias_expansion_limit
POSTMASTER = "postmaster"


@dataclass(frozen=True)
class AliasEntry:
    """What expansion needs of an alias: its targets (``local@domain`` or ``@domain``),
    its command and whether it is a mini-list."""

    deliver_to: tuple[str, ...] = ()
    pipe: str = ""
    mini_list: bool = False


class Lookup(Protocol):
    """The directory as expansion reads it; each call is one indexed look-up."""

    def is_local(self, address: Address) -> bool:
        """The address's domain is a local domain (we deliver into mailboxes)."""
        ...

    def alias(self, key: str) -> AliasEntry | None:
        """The alias of ``key``: an :attr:`Address.key` or ``@<A-label domain>``."""
        ...

    def has_mailbox(self, address: Address) -> bool:
        """A user with a mailbox has exactly this address (not the catchall)."""
        ...

    def has_catchall(self, address: Address) -> bool:
        """The address's domain has a catchall user."""
        ...


class ExpansionError(Exception):
    """The RCPT is refused: ``reply`` is the SMTP reply."""

    reason = "unknown_user"

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class UnknownRecipient(ExpansionError):
    pass


class AliasLoop(ExpansionError):
    reason = "alias_loop"


class TooManyTargets(ExpansionError):
    reason = "alias_loop"


def expand(address: Address, lookup: Lookup, postmaster: Address | None = None, *,
           given: str | None = None) -> list[Target]:
    """The recipients ``address`` (in a local domain) is delivered to, or an
    :class:`ExpansionError` with the reply refusing it. ``given`` is the address as the
    client wrote it (each recipient's ``orig_rcpt``), by default ``str(address)``."""
    walk = _Walk(lookup, postmaster, str(address) if given is None else given)
    if not walk.visit(address, (), None, strict=True):
        raise UnknownRecipient(f"550 5.1.1 <{address}>: Recipient address rejected: "
                               "User unknown in local recipient table")
    return list(walk.found.values())


@dataclass
class _Walk:
    lookup: Lookup
    postmaster: Address | None
    orig_rcpt: str

    def __post_init__(self) -> None:
        self.found: dict[str, Target] = {}

    def add(self, address: Address, mail_from: str | None, pipe: str = "") -> bool:
        key = f"|{pipe}" if pipe else address.key
        if key not in self.found:
            if len(self.found) >= MAX_TARGETS:
                raise TooManyTargets(f"550 5.5.3 <{self.orig_rcpt}>: alias expands to more "
                                     f"than {MAX_TARGETS} recipients")
            self.found[key] = Target(str(address), self.orig_rcpt, pipe, mail_from)
        return True

    def visit(self, address: Address, chain: tuple[str, ...], mail_from: str | None,
              *, strict: bool) -> bool:
        """Add the targets of ``address``; False when nothing covers it (``strict``: an
        unknown local address adds nothing; otherwise it stays a target of its own)."""
        if address.key in chain:
            raise AliasLoop(f"550 5.4.6 <{self.orig_rcpt}>: alias loop "
                            f"({' -> '.join((*chain, address.key))})")
        if not self.lookup.is_local(address):
            return self.add(address, mail_from)
        chain = (*chain, address.key)
        alias = self.lookup.alias(address.key)
        if alias is not None:
            return self.follow(address, alias, chain, mail_from, keep_local=False)
        if self.lookup.has_mailbox(address):
            return self.add(address, mail_from)
        if address.local.lower() == POSTMASTER and self.postmaster is not None:
            if self.postmaster.key == address.key:
                return self.add(address, mail_from)
            return self.visit(self.postmaster, chain, mail_from, strict=False)
        domain_alias = self.lookup.alias(f"@{address.ascii_domain}")
        if domain_alias is not None and self.follow(address, domain_alias, chain, mail_from,
                                                    keep_local=True):
            return True
        if self.lookup.has_catchall(address):
            return self.add(address, mail_from)
        return False if strict else self.add(address, mail_from)

    def follow(self, address: Address, alias: AliasEntry, chain: tuple[str, ...],
               mail_from: str | None, *, keep_local: bool) -> bool:
        """The targets of ``alias`` reached from ``address``; for a domain alias
        (``keep_local``), only those that exist (see the module docstring)."""
        if len(chain) > MAX_DEPTH:
            raise AliasLoop(f"550 5.4.6 <{self.orig_rcpt}>: aliases nested more than "
                            f"{MAX_DEPTH} levels deep")
        if alias.mini_list:
            mail_from = str(address)
        covered = False
        if alias.pipe:
            covered = self.add(address, mail_from, alias.pipe)
        for text in alias.deliver_to:
            target = rewrite(text, address)
            if target is None:
                continue
            if target.key == address.key:  # the alias names itself: deliver it there
                covered = self.add(target, mail_from)
                continue
            covered = self.visit(target, chain, mail_from, strict=keep_local) or covered
        return covered


def rewrite(target: str, address: Address) -> Address | None:
    """An alias target for ``address``: ``@domain`` keeps the address's local part.
    ``None`` when the result is no address (a long local part under a longer domain)."""
    text = f"{address.local}{target}" if target.startswith("@") else target
    try:
        return Address.parse(text, allow_utf8=True)
    except AddressError:
        return None
