"""A private Dovecot (own config, own base_dir, one loopback port) running the shipped
``contrib/dovecot`` files, for tests/test_dovecot.py.

Only what cannot be the same as on a server is changed in the shipped files: the path of
tmail's ``users.db``, the path of the SQL file, and the mail user (the test's unprivileged
user instead of ``tmail``). Everything else (queries, scheme, quota plugin) is used as is,
so the tests prove the files an admin installs.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

CONTRIB = REPO / "contrib" / "dovecot"
DOVECOT = Path("/usr/sbin/dovecot")
DRIVERS = [Path(f"/usr/lib/dovecot/modules/libdriver_{name}.so") for name in ("sqlite", "pgsql")]
# Dovecot refuses to access mail as root; Debian always has nobody/nogroup, so the test
# needs no account of its own (on a server this is the user tmail runs as).
MAIL_USER, MAIL_GROUP = "nobody", "nogroup"
SHIPPED_SQL_PATH = "/etc/dovecot/dovecot-sql.conf.ext"
SHIPPED_DB_PATH = "/var/lib/tmail/users.db"
SHIPPED_MAIL_USER = "'tmail'"


def ensure_dovecot() -> None:
    """Install Dovecot with the project's script when missing; skip only if we cannot."""
    if DOVECOT.exists() and all(driver.exists() for driver in DRIVERS):
        return
    if os.geteuid() != 0 and not _passwordless_sudo():
        pytest.skip("dovecot-imapd/dovecot-sqlite/dovecot-pgsql missing and neither root nor "
                    "sudo to install")
    subprocess.run([REPO / "scripts" / "apt-ensure", "dovecot-imapd", "dovecot-sqlite",
                    "dovecot-pgsql"], check=True, timeout=600)


def _passwordless_sudo() -> bool:
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def substitute(text: str, old: str, new: str, count: int) -> str:
    """Replace exactly ``count`` occurrences: a shipped file that changed shape fails loudly
    instead of silently testing something else."""
    found = text.count(old)
    if found != count:
        raise AssertionError(f"expected {count} x {old!r} in the shipped file, found {found}")
    return text.replace(old, new)


def give_to_mail_user(root: Path) -> None:
    """Hand ``root`` to the mail user, as if tmail's runner had run as that user.

    In the tests the runner runs as root (pytest's user), so the Maildirs it creates would
    be unreadable by Dovecot's mail processes; on a server tmail and the userdb's uid are
    the same user and nothing like this is needed.
    """
    uid, gid = pwd.getpwnam(MAIL_USER).pw_uid, grp.getgrnam(MAIL_GROUP).gr_gid
    for dirpath, _, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


class LoginRefused(Exception):
    """Dovecot answered ``NO [AUTHENTICATIONFAILED]`` (and not some other failure)."""


@dataclass
class Dovecot:
    conf: Path
    log: Path
    port: int
    process: subprocess.Popen[bytes]

    def imap(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.port, timeout=10)

    def login(self, login: str, password: str) -> imaplib.IMAP4:
        """A logged-in session with INBOX selected (so the userdb and Maildir are used too).

        Raises :class:`LoginRefused` for a refused password; any other failure (userdb
        error, unreadable Maildir) is an ``imaplib`` error, so it cannot pass as a refusal.
        """
        imap = self.imap()
        try:
            imap.login(login, password)
            status, data = imap.select("INBOX")
            assert status == "OK", (data, self.log_text())
        except imaplib.IMAP4.error as exc:
            imap.shutdown()
            if "AUTHENTICATIONFAILED" in str(exc):
                raise LoginRefused(str(exc)) from None
            raise AssertionError(f"{exc}\n{self.log_text()}") from exc
        except BaseException:
            imap.shutdown()
            raise
        return imap

    def can_log_in(self, login: str, password: str) -> bool:
        try:
            imap = self.login(login, password)
        except LoginRefused:
            return False
        imap.logout()
        return True

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["doveadm", "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=20)
        if check and done.returncode != 0:
            raise AssertionError(f"doveadm {args} failed: {done.stderr}\n{self.log_text()}")
        return done

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return "(no Dovecot log)"


def write_config(conf_dir: Path, runtime_dir: Path, users_db: Path, port: int) -> Path:
    """The private ``dovecot.conf`` that includes the (substituted) shipped files."""
    sql = (CONTRIB / "dovecot-sql.conf.ext").read_text()
    sql = substitute(sql, f"connect = {SHIPPED_DB_PATH}", f"connect = {users_db}", 1)
    sql = substitute(sql, f"{SHIPPED_MAIL_USER} AS uid", f"'{MAIL_USER}' AS uid", 1)
    sql = substitute(sql, f"{SHIPPED_MAIL_USER} AS gid", f"'{MAIL_GROUP}' AS gid", 1)
    (conf_dir / "dovecot-sql.conf.ext").write_text(sql)
    snippet = (CONTRIB / "10-tmail.conf").read_text()
    snippet = substitute(snippet, f"args = {SHIPPED_SQL_PATH}",
                         f"args = {conf_dir / 'dovecot-sql.conf.ext'}", 2)
    (conf_dir / "10-tmail.conf").write_text(snippet)
    uid = pwd.getpwnam(MAIL_USER).pw_uid
    conf = conf_dir / "dovecot.conf"
    conf.write_text(f"""\
# Private instance for tests/test_dovecot.py: nothing from /etc/dovecot.
base_dir = {runtime_dir / "run"}
state_dir = {runtime_dir / "state"}
log_path = {conf_dir / "dovecot.log"}
protocols = imap
listen = 127.0.0.1
# Plain IMAP on loopback only: no certificate to make, and plaintext LOGIN allowed.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Refused logins answer at once: the tests make several on purpose from one IP. A server
# delays each refusal (auth_failure_delay, 2 s) plus a penalty that grows per client IP up to
# 15 s; mode = 0 does not create the socket the auth process keeps that penalty through.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# The test's mail user is a system account; a server's tmail user must be >= this too.
first_valid_uid = {uid}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
!include {conf_dir / "10-tmail.conf"}
""")
    return conf


def start_dovecot(conf_dir: Path, runtime_dir: Path, users_db: Path) -> Dovecot:
    """Start ``dovecot -F`` in its own process group and wait for the IMAP greeting.

    ``runtime_dir`` must be reachable by the unprivileged processes (mail user, dovecot,
    dovenull): pytest's tmp dirs are not (0700 root), so it is a separate short path, which
    also keeps the sockets under the 108-byte limit of a Unix socket path.
    """
    for sub in ("run", "state"):
        (runtime_dir / sub).mkdir(exist_ok=True)
    port = free_port()
    conf = write_config(conf_dir, runtime_dir, users_db, port)
    with open(conf_dir / "dovecot.stdout", "wb") as out:
        process = subprocess.Popen([str(DOVECOT), "-F", "-c", str(conf)], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Dovecot(conf, conf_dir / "dovecot.log", port, process)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return server
        except OSError:
            time.sleep(0.05)
    stop_dovecot(server)
    output = (conf_dir / "dovecot.stdout").read_text(errors="replace")
    pytest.fail(f"Dovecot did not start:\n{output}\n{server.log_text()}")


def stop_dovecot(server: Dovecot) -> None:
    """``dovecot stop``, then the whole process group (children that outlive the master)."""
    if server.process.poll() is None:
        subprocess.run([str(DOVECOT), "-c", str(server.conf), "stop"], capture_output=True,
                       timeout=20)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=10)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
