"""The submission listeners (587 with STARTTLS, 465 with TLS from the first byte) of a real
receiver, with smtplib and swaks: AUTH before MAIL, AUTH only over TLS, a user sends only as
an address of theirs (envelope and ``From:``), every user relays, Message-ID/Date are added;
the MX listener beside them keeps its own rules."""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import email.utils
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtp_receiver.submission import SenderRules
from tests.conftest import REPO, free_port, stop, tmail_env, wait_until
from tests.dkim_helpers import signature_tags, verifies
from tests.sink import Sink
from tests.smtp_helpers import Receiver, start_receiver
from tmail import config as tmail_config
from tmail.address import Address
from tmail.config import Config, ConfigError
from tmail.db import Database, open_database
from tmail.directory.aliases import AliasStore
from tmail.directory.domains import DomainStore
from tmail.directory.lookup import Directory
from tmail.dkim.keys import KeyStore
from tmail.users import UserStore, open_store

DOMAIN = "sub.test"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
ALIAS = f"info@{DOMAIN}"  # delivers to alice (and to bob: both own it)
BOBS_ALIAS = f"sales@{DOMAIN}"  # delivers to bob only
PASSWORD = "password1"
REMOTE = "friend@elsewhere.example"


@dataclass
class Stack:
    receiver: Receiver
    submission: int  # 587's stand-in
    submissions: int  # 465's
    sink: Sink
    data: Path
    dkim_record: tuple[str, str]  # sub.test's (DnsName, DnsValue)

    def tls(self) -> ssl.SSLContext:
        return self.receiver.tls()

    def starttls(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.submission, local_hostname="client.test",
                              timeout=10, source_address=(source, 0))
        client.starttls(context=self.tls())
        client.ehlo()
        return client

    def implicit(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        client = smtplib.SMTP_SSL("127.0.0.1", self.submissions, local_hostname="client.test",
                                  timeout=10, context=self.tls(), source_address=(source, 0))
        client.ehlo()
        return client

    def client(self, port: str, login: str | None = ALICE) -> smtplib.SMTP:
        client = self.starttls() if port == "587" else self.implicit()
        if login is not None:
            client.login(login, PASSWORD)
        return client

    def records(self) -> int:
        return sum(1 for _ in self.receiver.queue.iter_records())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("submission")
    submission, submissions = free_port(), free_port()
    with Sink() as sink:
        env = tmail_env(data, TMAIL_SUBMISSION_BIND=f"127.0.0.1:{submission}",
                        TMAIL_SUBMISSIONS_BIND=f"127.0.0.1:{submissions}",
                        TMAIL_ROUTES=sink.route, TMAIL_SMTP_AUTH_FAILURE_LIMIT="2")
        config = tmail_config.load(env)
        users = open_store(config)
        users.create(ALICE, PASSWORD, auth_relay=False, have_mailbox=True)  # no AuthRelay
        users.create(BOB, PASSWORD, auth_relay=False, have_mailbox=True)
        aliases = AliasStore(open_database(config))
        aliases.create(ALIAS, [ALICE, BOB])
        aliases.create(BOBS_ALIAS, [BOB])
        key = KeyStore(open_database(config)).create(DOMAIN)
        receiver = start_receiver(env, data / "receiver.log")
        try:
            for port in (submission, submissions):
                assert wait_until(lambda p=port: _listening(p)), receiver.log.read_text()
            yield Stack(receiver, submission, submissions, sink, data,
                        (key.dns_name, key.dns_value))
        finally:
            stop(receiver.process)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def message(sender: str, extra: str = "", subject: str = "hello") -> bytes:
    return (f"From: Someone <{sender}>\r\nTo: <{REMOTE}>\r\nSubject: {subject}\r\n{extra}"
            f"\r\nhello from the client\r\n").encode()


def plain(login: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def run_runner(stack: Stack) -> None:
    done = subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO,
                          env=stack.receiver.env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]


# --- refusals, each with its code ---------------------------------------------------------


@pytest.mark.parametrize("port", ["587", "465"])
def test_mail_before_auth_is_refused_with_530(stack: Stack, port: str) -> None:
    with stack.client(port, login=None) as client:
        assert client.mail(ALICE) == (530, b"5.7.0 Authentication required")


def test_587_offers_and_accepts_auth_only_after_starttls(stack: Stack) -> None:
    with smtplib.SMTP("127.0.0.1", stack.submission, local_hostname="client.test",
                      timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.docmd("AUTH", plain(ALICE, PASSWORD)) == (
            538, b"5.7.11 Encryption required for requested authentication mechanism")
        assert client.mail(ALICE) == (530, b"5.7.0 Authentication required")
        client.starttls(context=stack.tls())
        client.ehlo()
        assert client.has_extn("auth")
        assert client.login(ALICE, PASSWORD)[0] == 235


@pytest.mark.parametrize("port", ["587", "465"])
@pytest.mark.parametrize("sender", [BOB, BOBS_ALIAS, REMOTE, "alice@other.example"])
def test_envelope_sender_not_owned_is_refused_with_553(stack: Stack, port: str,
                                                       sender: str) -> None:
    with stack.client(port) as client:
        assert client.mail(sender) == (553, b"5.7.1 Sender address rejected: not owned by user")


@pytest.mark.parametrize("port", ["587", "465"])
@pytest.mark.parametrize("header", [
    f"From: <{BOB}>",
    f"From: Alice <{ALICE}>, Bob <{BOB}>",  # every address of From: counts
    f"From: <{ALICE}>\r\nFrom: <{BOBS_ALIAS}>",  # and every From: field
    f"From: <{ALICE}>,\r\n\t<{BOB}>",  # folded
    "From: not an address",
])
def test_from_header_not_owned_is_refused_at_end_of_data(stack: Stack, port: str,
                                                         header: str) -> None:
    before = stack.records()
    body = f"{header}\r\nTo: <{REMOTE}>\r\nSubject: spoof\r\n\r\nhello\r\n".encode()
    with stack.client(port) as client:
        assert client.mail(ALICE)[0] == 250
        assert client.rcpt(REMOTE)[0] == 250
        assert client.data(body) == (553, b"5.7.1 Sender address rejected: not owned by user")
        assert client.noop()[0] == 250  # the session goes on
    assert stack.records() == before
    assert stack.receiver.leftovers() == []


@pytest.mark.parametrize("port", ["587", "465"])
@pytest.mark.parametrize("sender", [ALICE, ALIAS, "Alice@SUB.test"])
def test_own_address_or_an_alias_to_the_user_is_accepted(stack: Stack, port: str,
                                                         sender: str) -> None:
    with stack.client(port) as client:
        refused = client.sendmail(sender, [REMOTE], message(sender))
    assert refused == {}


def test_a_folded_from_header_of_the_user_is_accepted(stack: Stack) -> None:
    body = (f"From: =?utf-8?q?Alic=C3=A9?=\r\n <{ALICE}>,\r\n\t<{ALIAS}>\r\n"
            f"Subject: folded\r\n\r\nhello\r\n").encode()
    with stack.client("465") as client:
        assert client.sendmail(ALICE, [REMOTE], body) == {}


def test_per_ip_auth_failures_count_across_the_submission_ports(stack: Stack) -> None:
    """TMAIL_SMTP_AUTH_FAILURE_LIMIT=2 here; its own source address, not to block others."""
    with stack.implicit("127.0.0.2") as client:
        for _ in range(2):
            assert client.docmd("AUTH", plain(ALICE, "wrong"))[0] == 535
    with stack.starttls("127.0.0.2") as client:
        assert client.docmd("AUTH", plain(ALICE, PASSWORD))[0] == 454


# --- what goes through --------------------------------------------------------------------


@pytest.mark.parametrize("port", ["587", "465"])
def test_a_submission_is_relayed_signed_with_message_id_and_date_added(stack: Stack,
                                                                       port: str) -> None:
    """Alice has no AuthRelay: on the submission ports every logged-in user relays. The
    headers we add come before signing, so they are signed too."""
    subject = f"relayed via {port}"
    with stack.client(port) as client:
        assert client.sendmail(ALICE, [REMOTE], message(ALICE, subject=subject)) == {}
    run_runner(stack)
    [got] = [m for m in stack.sink.messages if f"Subject: {subject}".encode() in m.content]
    assert (got.mail_from, got.rcpt_tos) == (ALICE, [REMOTE])
    parsed = email.message_from_bytes(got.content, policy=email.policy.default)
    assert parsed["Message-ID"].endswith("@mx.test.local>")
    assert email.utils.parsedate_to_datetime(parsed["Date"]) is not None
    assert "with ESMTPSA" in parsed["Received"]  # TLS and AUTH, 465 as well as 587
    assert got.content.endswith(b"\r\nhello from the client\r\n")
    assert verifies(got.content, [stack.dkim_record])
    tags = signature_tags(got.content)
    assert tags["d"] == DOMAIN
    assert {"from", "date", "message-id"} <= set(tags["h"].lower().split(":"))


def test_message_id_and_date_of_the_client_are_kept(stack: Stack) -> None:
    extra = "Message-ID: <mine@client.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    with stack.client("587") as client:
        client.mail(ALICE)
        client.rcpt(REMOTE)
        code, text = client.data(message(ALICE, extra))
    assert code == 250
    raw = _queued(stack, text)
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert parsed.get_all("Message-ID") == ["<mine@client.test>"]
    assert parsed.get_all("Date") == ["Tue, 1 Dec 2026 10:00:00 +0000"]


def _queued(stack: Stack, reply: bytes) -> bytes:
    uuid = reply.decode().split()[-1]
    record = next(r for r in stack.receiver.queue.iter_records() if r.uuid == uuid)
    raw = stack.receiver.queue.read_raw(record.id)
    assert raw is not None
    return raw


def test_465_speaks_tls_from_the_first_byte(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.submissions), timeout=10) as plain:
        plain.sendall(b"EHLO client.test\r\n")  # not a TLS ClientHello: no SMTP here
        with contextlib.suppress(ConnectionResetError):
            assert not plain.recv(100).startswith(b"220")
    with (socket.create_connection(("127.0.0.1", stack.submissions), timeout=10) as raw,
          stack.tls().wrap_socket(raw, server_hostname="127.0.0.1") as tls):
        assert tls.recv(1000).startswith(b"220 mx.test.local")
    with stack.implicit() as client:
        assert client.has_extn("auth") and not client.has_extn("starttls")
    log = stack.receiver.log.read_text()
    # (aiosmtpd's warning that AUTH is required without STARTTLS: not so on 465)
    assert "auth_require_tls" not in log and "Traceback" not in log, log[-3000:]


def test_the_mx_listener_keeps_its_rules(stack: Stack) -> None:
    with stack.receiver.smtp() as client:
        client.ehlo()
        assert client.mail(BOB)[0] == 250  # no AUTH needed, any sender
        assert client.rcpt(ALICE)[0] == 250
        assert client.rcpt(REMOTE)[0] == 554  # no relaying without AUTH
        client.rset()
        client.starttls(context=stack.tls())
        client.ehlo()
        client.login(ALICE, PASSWORD)
        assert client.mail(BOB)[0] == 250  # the MX does not check ownership
        code, text = client.rcpt(REMOTE)  # Alice has no AuthRelay: no relaying here
        assert (code, text[:5]) == (554, b"5.7.1")


# --- swaks, as an admin would test it -------------------------------------------------------


@pytest.fixture(scope="module")
def swaks() -> str:
    """swaks and the Perl TLS module it needs for STARTTLS and 465 (only recommended by the
    Debian package), installed by the project's script when missing."""
    subprocess.run([REPO / "scripts" / "apt-ensure", "swaks", "libnet-ssleay-perl"],
                   check=True, timeout=600)
    found = shutil.which("swaks")
    assert found is not None
    return found


@pytest.mark.parametrize(("tls_flag", "which"), [("--tls", "submission"),
                                                  ("--tls-on-connect", "submissions")])
@pytest.mark.parametrize(("sender", "header_from", "expected"), [
    (ALICE, ALICE, "250 2.0.0 Ok: queued as"),
    (ALIAS, ALIAS, "250 2.0.0 Ok: queued as"),
    (BOB, BOB, "553 5.7.1 Sender address rejected"),
    (ALICE, BOB, "553 5.7.1 Sender address rejected"),
])
def test_swaks_submissions(stack: Stack, swaks: str, tls_flag: str, which: str, sender: str,
                           header_from: str, expected: str) -> None:
    port = getattr(stack, which)
    done = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{port}", tls_flag, "--auth", "PLAIN",
         "--auth-user", ALICE, "--auth-password", PASSWORD, "--ehlo", "client.test",
         "--from", sender, "--to", REMOTE, "--header", f"From: <{header_from}>",
         "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert expected in done.stdout, done.stdout[-3000:]
    assert (done.returncode == 0) == expected.startswith("250"), done.stdout[-3000:]


def test_swaks_without_auth_gets_530(stack: Stack, swaks: str) -> None:
    done = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{stack.submission}", "--tls", "--ehlo", "client.test",
         "--from", ALICE, "--to", REMOTE, "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert "530 5.7.0 Authentication required" in done.stdout, done.stdout[-3000:]
    assert done.returncode != 0


# --- who owns an address: the directory's answer ----------------------------------------------


@pytest.fixture(scope="module")
def rules(engine: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[SenderRules]:
    """A directory on each engine (one per module: the checks only read it): alice and bob
    in sub.test, carol the catchall of catch.test, old.test a local domain aliased to
    sub.test, postmaster@ to alice."""
    tmp_path = tmp_path_factory.mktemp("owners")
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'users.db'}"
    else:
        postgres = request.getfixturevalue("postgres")
        url = postgres.url(postgres.create_database())
    database = Database(url)
    database.migrate()
    config = Config(data_dir=tmp_path, mailboxes_dir=tmp_path / "mailboxes",
                    postmaster=ALICE)
    users = UserStore(database, config.mailboxes_dir)
    users.create(ALICE, PASSWORD, have_mailbox=True)
    users.create(BOB, PASSWORD, have_mailbox=True)
    users.create("carol@catch.test", PASSWORD, have_mailbox=True, is_catchall=True)
    users.create("relay-app", PASSWORD, auth_relay=True)
    DomainStore(database).create("old.test", local=True)
    aliases = AliasStore(database)
    aliases.create(ALIAS, [ALICE, BOB])
    aliases.create(BOBS_ALIAS, [BOB])
    aliases.create(f"team@{DOMAIN}", [ALIAS])  # nested
    aliases.create(f"list@{DOMAIN}", [ALICE, REMOTE], mini_list=True)
    aliases.create(f"bot@{DOMAIN}", pipe="/usr/bin/true")
    aliases.create("@old.test", [f"@{DOMAIN}"])
    yield SenderRules(config, Directory(database, config))
    database.dispose()


@pytest.mark.parametrize(("login", "sender", "owned"), [
    (ALICE, ALICE, True),
    (ALICE, "ALICE@Sub.Test", True),  # logins and addresses are case-insensitive
    (ALICE, ALIAS, True),  # an alias to alice (and bob)
    (BOB, ALIAS, True),
    (ALICE, f"team@{DOMAIN}", True),  # an alias to that alias
    (ALICE, f"list@{DOMAIN}", True),  # a mini-list alice is on
    (ALICE, "alice@old.test", True),  # a domain alias to her domain
    (ALICE, f"postmaster@{DOMAIN}", True),  # TMAIL_POSTMASTER
    # the catchall receives strays (typos, guesses): that is no address of hers to send as
    ("carol@catch.test", "anything@catch.test", False),
    (ALICE, BOB, False),
    (ALICE, BOBS_ALIAS, False),
    (ALICE, f"bot@{DOMAIN}", False),  # a command, nobody's mailbox
    (ALICE, f"nobody@{DOMAIN}", False),
    (ALICE, "anything@catch.test", False),
    (ALICE, REMOTE, False),  # not ours at all
    (BOB, "alice@old.test", False),
    ("relay-app", "relay-app@sub.test", False),  # a relay-only name owns no address
])
def test_a_user_owns_their_login_and_what_the_directory_delivers_to_them(
        rules: SenderRules, login: str, sender: str, owned: bool) -> None:
    expected = None if owned else "553 5.7.1 Sender address rejected: not owned by user"
    assert rules.check_envelope(login, Address.parse(sender)) == expected
    assert rules.check_from(login, [f"Someone <{sender}>".encode()]) == expected


@pytest.mark.parametrize(("values", "owned"), [
    ([], True),  # no From: nothing claimed
    ([b"alice@sub.test"], True),
    ([b"=?utf-8?q?Alic=C3=A9?= <alice@sub.test>, info@sub.test"], True),
    (["Alicé <alice@sub.test>".encode()], True),  # RFC 6532 UTF-8 display name
    ([b"alice@sub.test", b"bob@sub.test"], False),
    ([b"Alice <alice@sub.test>, Bob <bob@sub.test>"], False),
    ([b"undisclosed:;"], False),  # no address to own
    ([b"Alice"], False),
    ([b"\xff <alice@sub.test>"], False),  # not UTF-8
])
def test_every_from_address_must_be_owned(rules: SenderRules, values: list[bytes],
                                          owned: bool) -> None:
    assert (rules.check_from(ALICE, values) is None) == owned


def test_the_null_sender_is_allowed(rules: SenderRules) -> None:
    assert rules.check_envelope(ALICE, None) is None


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["TMAIL_SUBMISSION_BIND", "TMAIL_SUBMISSIONS_BIND"])
def test_submission_beyond_loopback_needs_a_certificate(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}=0.0.0.0:4650: .*TMAIL_TLS_CERT"):
        tmail_config.load(tmail_env(tmp_path, **{variable: "0.0.0.0:4650"}))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    config = tmail_config.load(tmail_env(tmp_path, TMAIL_TLS_CERT=str(cert),
                                         TMAIL_TLS_KEY=str(key), **{variable: "0.0.0.0:4650"}))
    assert (config.submission_bind or config.submissions_bind) == tmail_config.HostPort(
        "0.0.0.0", 4650)


@pytest.mark.parametrize(("env", "message"), [
    ({"TMAIL_SUBMISSION_BIND": "127.0.0.1:2525"}, "TMAIL_SUBMISSION_BIND=127.0.0.1:2525 overlaps"),
    ({"TMAIL_SUBMISSION_BIND": "127.0.0.1:587", "TMAIL_SUBMISSIONS_BIND": "0.0.0.0:587"},
     "TMAIL_SUBMISSIONS_BIND=0.0.0.0:587 overlaps TMAIL_SUBMISSION_BIND"),
    ({"TMAIL_SUBMISSIONS_BIND": "465"}, "TMAIL_SUBMISSIONS_BIND='465': expected HOST:PORT"),
])
def test_bad_submission_settings_name_the_variable(tmp_path: Path, env: dict[str, str],
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tmail_config.load(tmail_env(tmp_path, **env))


def test_submission_listeners_are_off_by_default(tmp_path: Path) -> None:
    config = tmail_config.load(tmail_env(tmp_path, TMAIL_SUBMISSION_BIND=""))
    assert config.submission_bind is None and config.submissions_bind is None
