"""Alias expansion and the RCPT decision order, as a function over a directory look-up.

The look-up here is a small in-memory directory (the SQL one is tested through the API and
real SMTP sessions in the other test_directory_* files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tmail.address import Address
from tmail.directory.expansion import (
    MAX_DEPTH,
    AliasEntry,
    AliasLoop,
    UnknownRecipient,
    expand,
)
from tmail.queue import Target


@dataclass
class Directory:
    local: set[str] = field(default_factory=lambda: {"a.test", "b.test", "old.test"})
    aliases: dict[str, AliasEntry] = field(default_factory=dict)
    mailboxes: set[str] = field(default_factory=set)
    catchalls: set[str] = field(default_factory=set)

    def is_local(self, address: Address) -> bool:
        return address.ascii_domain in self.local

    def alias(self, key: str) -> AliasEntry | None:
        return self.aliases.get(key)

    def has_mailbox(self, address: Address) -> bool:
        return address.key in self.mailboxes

    def has_catchall(self, address: Address) -> bool:
        return address.ascii_domain in self.catchalls


def a(text: str) -> Address:
    return Address.parse(text, allow_utf8=True)


def targets(rcpt: str, directory: Directory, postmaster: str | None = None) -> list[str]:
    found = expand(a(rcpt), directory, a(postmaster) if postmaster else None, given=rcpt)
    assert {r.orig_rcpt for r in found} == {rcpt}
    return [r.rcpt_to for r in found]


def test_an_alias_to_two_local_users_and_a_remote_address_gives_three_recipients() -> None:
    d = Directory(mailboxes={"u1@a.test", "u2@b.test"},
                  aliases={"team@a.test": AliasEntry(("u1@a.test", "U2@b.test",
                                                      "x@remote.example"))})
    assert targets("Team@A.test", d) == ["u1@a.test", "U2@b.test", "x@remote.example"]


def test_nested_aliases_are_followed_and_duplicates_removed() -> None:
    d = Directory(mailboxes={"u1@a.test", "u2@a.test"}, aliases={
        "all@a.test": AliasEntry(("team@a.test", "u1@a.test")),
        "team@a.test": AliasEntry(("u1@a.test", "u2@a.test"))})
    assert targets("all@a.test", d) == ["u1@a.test", "u2@a.test"]


def test_an_exact_alias_comes_before_the_user_of_the_same_address() -> None:
    d = Directory(mailboxes={"u1@a.test", "u2@a.test"},
                  aliases={"u1@a.test": AliasEntry(("u2@a.test",))})
    assert targets("u1@a.test", d) == ["u2@a.test"]


def test_an_alias_naming_itself_keeps_a_copy_there() -> None:
    d = Directory(mailboxes={"u1@a.test"},
                  aliases={"u1@a.test": AliasEntry(("u1@a.test", "copy@remote.example"))})
    assert targets("u1@a.test", d) == ["u1@a.test", "copy@remote.example"]


@pytest.mark.parametrize("aliases", [
    {"x@a.test": AliasEntry(("y@a.test",)), "y@a.test": AliasEntry(("x@a.test",))},
    {"@a.test": AliasEntry(("@b.test",)), "@b.test": AliasEntry(("@a.test",))},
])
def test_a_loop_is_refused_with_5_4_6(aliases: dict[str, AliasEntry]) -> None:
    with pytest.raises(AliasLoop) as refused:
        expand(a("x@a.test"), Directory(aliases=aliases))
    assert refused.value.reply.startswith("550 5.4.6 <x@a.test>: alias loop")


def test_aliases_are_followed_ten_levels_deep_and_no_deeper() -> None:
    def chain(levels: int) -> Directory:
        aliases = {f"l{n}@a.test": AliasEntry((f"l{n + 1}@a.test",)) for n in range(levels)}
        return Directory(aliases=aliases, mailboxes={f"l{levels}@a.test"})

    assert targets("l0@a.test", chain(MAX_DEPTH)) == [f"l{MAX_DEPTH}@a.test"]
    with pytest.raises(AliasLoop) as refused:
        expand(a("l0@a.test"), chain(MAX_DEPTH + 1))
    assert refused.value.reply.startswith("550 5.4.6")


def test_a_domain_alias_keeps_the_local_part_and_covers_only_existing_addresses() -> None:
    d = Directory(mailboxes={"bob@b.test"}, aliases={"@old.test": AliasEntry(("@b.test",))})
    assert targets("Bob@old.test", d) == ["Bob@b.test"]
    with pytest.raises(UnknownRecipient) as refused:
        expand(a("nobody@old.test"), d)
    assert refused.value.reply.startswith("550 5.1.1 <nobody@old.test>")


def test_a_domain_alias_to_a_remote_domain_covers_every_address() -> None:
    d = Directory(aliases={"@old.test": AliasEntry(("@new.example",))})
    assert targets("anyone@old.test", d) == ["anyone@new.example"]


def test_order_is_alias_user_domain_alias_catchall() -> None:
    d = Directory(mailboxes={"u@a.test", "u@b.test", "catch@a.test"}, catchalls={"a.test"},
                  aliases={"@a.test": AliasEntry(("@b.test",))})
    assert targets("u@a.test", d) == ["u@a.test"]  # the user, before the domain alias
    assert targets("other@a.test", d) == ["other@a.test"]  # not at b.test: the catchall


def test_an_unknown_local_address_is_refused_with_5_1_1() -> None:
    with pytest.raises(UnknownRecipient):
        expand(a("nobody@a.test"), Directory())


def test_an_unknown_local_target_named_by_an_alias_stays_a_recipient() -> None:
    d = Directory(aliases={"x@a.test": AliasEntry(("gone@a.test",))})
    assert targets("x@a.test", d) == ["gone@a.test"]


@pytest.mark.parametrize("given", ["postmaster@a.test", "PostMaster@a.test"])
def test_postmaster_goes_to_its_alias_or_user_else_tmail_postmaster(given: str) -> None:
    assert targets(given, Directory(), postmaster="admin@remote.example") == [
        "admin@remote.example"]
    assert targets(given, Directory(mailboxes={"postmaster@a.test"}),
                   postmaster="admin@remote.example") == [given]
    aliased = Directory(aliases={"postmaster@a.test": AliasEntry(("boss@b.test",))})
    assert targets(given, aliased, postmaster="admin@remote.example") == ["boss@b.test"]


def test_postmaster_without_tmail_postmaster_is_like_any_address() -> None:
    with pytest.raises(UnknownRecipient):
        expand(a("postmaster@a.test"), Directory())


def test_a_pipe_and_a_mini_list() -> None:
    d = Directory(mailboxes={"u1@a.test"}, aliases={
        "list@a.test": AliasEntry(("u1@a.test", "x@remote.example"), mini_list=True),
        "bot@a.test": AliasEntry(("list@a.test",), pipe="/usr/bin/bot --in")})
    assert expand(a("bot@a.test"), d) == [
        Target("bot@a.test", "bot@a.test", "/usr/bin/bot --in"),
        Target("u1@a.test", "bot@a.test", mail_from="list@a.test"),
        Target("x@remote.example", "bot@a.test", mail_from="list@a.test"),
    ]
