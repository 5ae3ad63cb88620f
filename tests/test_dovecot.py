"""Dovecot serves tmail's users and Maildirs over IMAP with the shipped contrib/dovecot files.

One real gunicorn (the users API) and one private Dovecot (see tests/dovecot_helper.py) share
a database and a mailboxes tree for the whole module, once per engine: tmail's ``users.db``
read with ``dovecot-sql.conf.ext`` (dovecot-sqlite), and the tests' PostgreSQL read with
``dovecot-pgsql.conf.ext`` (dovecot-pgsql) through a role that may only read the users table.
What the API writes must be what Dovecot reads at once (no cache, no sync step), and what the
queue runner delivers must be what an IMAP client fetches.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy

from queue_runner.delivery import Runner
from tests.conftest import ApiServer, start_api, stop
from tests.dovecot_helper import (
    CONTRIB,
    MAIL_USER,
    SQL_FILES,
    Dovecot,
    ensure_dovecot,
    give_to_mail_user,
    start_dovecot,
    stop_dovecot,
)
from tests.postgres import PostgresServer
from tmail.queue import QueueStore

DOMAIN = "dovecot.test"
PASSWORD = "mot de passe"
EX_NOUSER = 67  # doveadm's exit status for "no such user"


@dataclass
class Stack:
    api: ApiServer
    dovecot: Dovecot
    mailboxes: Path


def dovecot_reader(postgres: PostgresServer, dbname: str) -> str:
    """A role that may read tmail's users table and nothing else, as README.md tells an admin
    to make for Dovecot; its libpq connection string."""
    role, password = f"dovecot_{secrets.token_hex(4)}", secrets.token_hex(12)
    with psycopg.connect(postgres.libpq(dbname), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT SELECT ON users TO {role}")
    return postgres.libpq(dbname, user=role, password=password)


@pytest.fixture(scope="module")
def stack(engine: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API and Dovecot on one database (``users.db``, or one of the session's PostgreSQL);
    the mailboxes live where the mail user can reach them (pytest's tmp dirs are private to
    root)."""
    ensure_dovecot()
    if os.geteuid() != 0:
        pytest.skip("Dovecot's privilege separation and the mail user's Maildirs need root")
    data_dir = tmp_path_factory.mktemp("dovecot")
    with ExitStack() as cleanup:
        runtime = Path(tempfile.mkdtemp(prefix="tmail-dovecot-", dir="/tmp"))
        cleanup.callback(shutil.rmtree, runtime, ignore_errors=True)
        runtime.chmod(0o755)
        mailboxes = runtime / "mailboxes"
        mailboxes.mkdir()
        give_to_mail_user(mailboxes)
        if engine == "sqlite":
            api = start_api(data_dir, TMAIL_MAILBOXES_DIR=str(mailboxes))
            cleanup.callback(stop, api.process)
            driver, connect = "sqlite", str(api.config.users_db)
        else:
            postgres = request.getfixturevalue("postgres")
            dbname = postgres.create_database()
            api = start_api(data_dir, TMAIL_MAILBOXES_DIR=str(mailboxes),
                            TMAIL_DATABASE_URL=postgres.url(dbname))
            cleanup.callback(stop, api.process)
            driver, connect = "pgsql", dovecot_reader(postgres, dbname)  # after the migration
        dovecot = start_dovecot(data_dir, runtime, driver, connect)
        cleanup.callback(stop_dovecot, dovecot)
        yield Stack(api, dovecot, mailboxes)


def new_login(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(4)}@{DOMAIN}"


def create(stack: Stack, login: str, **body: object) -> dict[str, object]:
    payload = {"passwd": PASSWORD, "authRelay": False, "haveMailbox": True,
               "mailboxQuota": "1G", **body}
    response = stack.api.session.post(stack.api.url(f"/users/{login}"), json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def userdb(dovecot: Dovecot, login: str) -> dict[str, str]:
    """The fields Dovecot's userdb gives ``login`` (``doveadm user``)."""
    lines = dovecot.doveadm("user", login).stdout.splitlines()
    return dict(line.split("\t", 1) for line in lines[1:])


def storage_limit_kib(dovecot: Dovecot, login: str) -> str:
    """The STORAGE limit the quota plugin enforces for ``login``, in KiB ("-": none)."""
    rows = [line.split("\t") for line in
            dovecot.doveadm("-f", "tab", "quota", "get", "-u", login).stdout.splitlines()]
    header = rows[0]
    [storage] = [dict(zip(header, row, strict=True)) for row in rows[1:] if row[1] == "STORAGE"]
    return storage["Limit"]


def test_user_created_through_the_api_logs_in(stack: Stack) -> None:
    login = new_login()
    create(stack, login)
    assert stack.dovecot.can_log_in(login, PASSWORD)


def test_logins_match_without_regard_to_case_like_tmail_delivery(stack: Stack) -> None:
    """Dovecot lower-cases the name it is given; tmail keeps the spelling it was given."""
    login = new_login("Ann.")
    user = create(stack, login)
    for spelling in (login, login.lower(), login.upper()):
        assert stack.dovecot.can_log_in(spelling, PASSWORD), spelling
    assert userdb(stack.dovecot, login.lower())["home"] == user["Home"]


def test_wrong_password_is_refused(stack: Stack) -> None:
    login = new_login()
    create(stack, login)
    assert not stack.dovecot.can_log_in(login, "not the password")
    assert not stack.dovecot.can_log_in(f"nobody-{login}", PASSWORD)


def test_deleted_user_is_refused_at_once(stack: Stack) -> None:
    login = new_login()
    create(stack, login)
    assert stack.dovecot.can_log_in(login, PASSWORD)
    assert stack.api.session.delete(stack.api.url(f"/users/{login}")).status_code == 200
    assert not stack.dovecot.can_log_in(login, PASSWORD)
    assert stack.dovecot.doveadm("user", login, check=False).returncode == EX_NOUSER


def test_inactive_user_is_refused(stack: Stack) -> None:
    """The API has no way to deactivate a user, so the column is set as an operator would."""
    login = new_login()
    create(stack, login)
    engine = sqlalchemy.create_engine(stack.api.config.database)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE users SET active = 'N' WHERE login = :login"),
                         {"login": login})
    finally:
        engine.dispose()
    assert not stack.dovecot.can_log_in(login, PASSWORD)


def test_user_without_mailbox_is_refused_and_unknown_to_the_userdb(stack: Stack) -> None:
    """A relay-only user has nothing to read: no IMAP login, no userdb entry."""
    login = new_login()
    create(stack, login, haveMailbox=False, mailboxQuota="")
    assert not stack.dovecot.can_log_in(login, PASSWORD)
    assert stack.dovecot.doveadm("user", login, check=False).returncode == EX_NOUSER
    listed = stack.dovecot.doveadm("user", "*").stdout.split()
    assert login not in listed


def test_password_change_applies_at_once(stack: Stack) -> None:
    login = new_login()
    create(stack, login)
    assert stack.dovecot.can_log_in(login, PASSWORD)
    response = stack.api.session.put(stack.api.url(f"/users/{login}"),
                                     json={"passwd": "nouveau secret"})
    assert response.status_code == 204
    assert stack.dovecot.can_log_in(login, "nouveau secret")
    assert not stack.dovecot.can_log_in(login, PASSWORD)


def test_delivered_message_reads_back_byte_for_byte(stack: Stack) -> None:
    """The runner's Maildir file is what IMAP serves (LF back to CRLF), and the quota Dovecot
    reports is tmail's own accounting (both use the Maildir++ maildirsize file)."""
    login = new_login()
    user = create(stack, login, mailboxQuota="1G")
    raw = (b"From: Sender <sender@elsewhere.test>\r\nTo: <" + login.encode() + b">\r\n"
           b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <dovecot-1@elsewhere.test>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n"
           + "Un café, s'il vous plaît.\r\n".encode() + b".leading dot\r\n\r\n"
           + b"x" * 76 + b"\r\n")  # some 8-bit, a dot line, an empty line
    store = QueueStore(stack.api.config.queue_dir)
    store.enqueue(raw, "sender@elsewhere.test", [login])
    runner = Runner.build(stack.api.config)
    try:
        assert runner.run_once() == 1
    finally:
        runner.shutdown()
    maildir = Path(str(user["Home"])) / "Maildir"
    [delivered_file] = list((maildir / "new").iterdir())
    delivered = delivered_file.read_bytes()
    assert delivered.startswith(f"Return-Path: <sender@elsewhere.test>\nDelivered-To: {login}\n"
                                .encode()) and b"\r" not in delivered
    give_to_mail_user(stack.mailboxes)

    imap = stack.dovecot.login(login, PASSWORD)
    try:
        status, data = imap.fetch("1", "(RFC822.SIZE RFC822)")
        assert status == "OK", data
        status, quota = imap.getquotaroot("INBOX")
        assert status == "OK", quota
    finally:
        imap.logout()

    expected = delivered.replace(b"\n", b"\r\n")
    envelope, body = data[0]
    assert body == expected
    size = re.search(rb"RFC822\.SIZE (\d+)", envelope)
    assert size is not None and int(size.group(1)) == len(expected)
    # STORAGE used/limit in KiB (used rounded up): tmail's byte count from maildirsize.
    assert quota[1] == [f'"User quota" (STORAGE {-(-len(delivered) // 1024)} 1048576)'.encode()]


@pytest.mark.parametrize(
    ("quota", "rule", "limit_kib"),
    [
        ("1G", "*:storage=1G", "1048576"),
        ("500M", "*:storage=500M", "512000"),
        ("10240K", "*:storage=10240K", "10240"),
        ("1048576", "*:bytes=1048576", "1024"),  # a bare number is bytes in tmail
        ("", None, "-"),  # no quota
    ],
)
def test_mailbox_quota_reaches_dovecot(
    stack: Stack, quota: str, rule: str | None, limit_kib: str
) -> None:
    """MailboxQuota becomes the userdb's quota_rule, and the plugin enforces that limit."""
    login = new_login()
    user = create(stack, login, mailboxQuota=quota)
    fields = userdb(stack.dovecot, login)
    assert fields.get("quota_rule") == rule
    assert (fields["home"], fields["mail"], fields["quota"]) == (
        user["Home"], "maildir:~/Maildir", "maildir:User quota")
    assert fields["uid"] == str(pwd.getpwnam(MAIL_USER).pw_uid)
    assert storage_limit_kib(stack.dovecot, login) == limit_kib


def shipped_settings(name: str) -> dict[str, str]:
    """The ``key = value`` settings of a shipped SQL file (continuation lines joined)."""
    settings = {}
    for line in (CONTRIB / name).read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = " ".join(value.split())
    return settings


def test_both_engines_ship_the_same_queries() -> None:
    """One set of queries, so that the SQLite and PostgreSQL files cannot drift apart: only
    the driver and the connection differ."""
    sqlite, pgsql = (shipped_settings(name) for name, _ in SQL_FILES.values())
    assert (sqlite.pop("driver"), pgsql.pop("driver")) == ("sqlite", "pgsql")
    assert sqlite.pop("connect") != pgsql.pop("connect")
    assert sqlite == pgsql
    assert set(sqlite) == {"default_pass_scheme", "password_query", "user_query",
                           "iterate_query"}
