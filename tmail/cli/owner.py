"""Commands write the queue as the queue's owner, whoever runs them.

A cron job running ``sendmail`` as root, or an admin typing ``python -m tmail queue hold``
under sudo, would otherwise create records and directories only root can read, and the runner
(running as the queue's owner) would trip over them. Like Postfix's ``postdrop``, the command
takes the identity of the queue before touching it: root switches to the owner's uid and gid;
another user, who could only leave files the owner cannot read, is refused.
"""

from __future__ import annotations

import getpass
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

EX_NOPERM = 77


@dataclass(frozen=True)
class Caller:
    """Who ran the command, kept from before the switch (``sendmail`` says so in its trace
    header and uses the login as the default sender)."""

    uid: int
    login: str

    @classmethod
    def current(cls) -> Caller:
        try:
            login = getpass.getuser()  # LOGNAME/USER first, as sendmail does, then passwd
        except (KeyError, OSError):
            login = str(os.getuid())
        return cls(os.getuid(), login)


class OwnerError(PermissionError):
    """This process may not write the queue as its owner (the command exits EX_NOPERM)."""


def owner_of(path: Path) -> os.stat_result:
    """The status of ``path``, or of its nearest existing parent (a queue not created yet
    will belong to whoever owns the data directory)."""
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(path)


def become_owner(queue_dir: Path) -> None:
    """Run as the owner of ``queue_dir`` from now on (root switches; others must be it)."""
    info = owner_of(queue_dir)
    if os.geteuid() == info.st_uid:
        return
    try:
        name = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        name = str(info.st_uid)
    if os.geteuid() != 0:
        raise OwnerError(
            f"the queue {queue_dir} belongs to uid {info.st_uid} ({name}), not to uid "
            f"{os.geteuid()}: run this command as {name}"
            + ("" if info.st_uid == 0 else " or as root"))
    if name != str(info.st_uid):
        os.initgroups(name, info.st_gid)
    else:
        os.setgroups([])
    os.setgid(info.st_gid)
    os.setuid(info.st_uid)
