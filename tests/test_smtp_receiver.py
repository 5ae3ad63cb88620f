"""The SMTP receiver as a real subprocess, driven by smtplib (and a raw socket) on loopback."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ApiServer, child_pids, stop, tmail_env, wait_until
from tests.smtp_helpers import LOCAL, Receiver, add_users, start_receiver
from tmail import config as tmail_config
from tmail.queue import QueueStore

BODY = b"From: sender@elsewhere.org\r\nSubject: hello\r\n\r\nline one\r\n.dot line\r\n"


@pytest.fixture(scope="module")
def receiver(api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """A receiver on the API's data dir (so GET /queue sees what it queues); AUTH needs TLS."""
    add_users(api.env)
    server = start_receiver({**api.env, "TMAIL_MAX_MESSAGE_SIZE": "20000",
                             "TMAIL_MAX_RECIPIENTS": "5"},
                            tmp_path_factory.mktemp("smtp") / "receiver.log")
    yield server
    stop(server.process)


@pytest.fixture(scope="module")
def loose_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """AUTH without TLS (loopback tests) and a relay network."""
    data = tmp_path_factory.mktemp("loose")
    env = tmail_env(data, TMAIL_SMTP_AUTH_REQUIRE_TLS="false",
                    TMAIL_RELAY_NETWORKS="127.0.0.0/8")
    add_users(env)
    server = start_receiver(env, data / "receiver.log")
    yield server
    stop(server.process)


def queued(receiver: Receiver, uuid: str) -> list:  # type: ignore[type-arg]
    return [r for r in receiver.queue.iter_records() if r.uuid == uuid]


def uuid_of(reply: tuple[int, bytes]) -> str:
    return reply[1].decode().rsplit(" ", 1)[1]


def send(client: smtplib.SMTP, sender: str, rcpts: list[str], body: bytes = BODY) -> str:
    client.ehlo_or_helo_if_needed()
    client.mail(sender)
    for rcpt in rcpts:
        code, text = client.rcpt(rcpt)
        assert code == 250, text
    reply = client.data(body)
    assert reply[0] == 250, reply
    return uuid_of(reply)


def test_ehlo_advertises_the_extensions_and_auth_only_after_starttls(receiver: Receiver) -> None:
    with receiver.smtp() as client:
        client.ehlo()
        for extension in ("size", "8bitmime", "pipelining", "starttls", "enhancedstatuscodes"):
            assert client.has_extn(extension), extension
        assert client.esmtp_features["size"] == "20000"
        assert not client.has_extn("auth")
        client.starttls(context=receiver.tls())
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert client.sock.version().startswith("TLS")


def test_local_mail_is_queued_byte_for_byte_under_a_trace_header(
    receiver: Receiver, api: ApiServer
) -> None:
    with receiver.smtp() as client:
        uuid = send(client, "sender@elsewhere.org", [f"bob@{LOCAL}"])
    [record] = queued(receiver, uuid)
    raw = receiver.queue.read_raw(record.id)
    trace, _, rest = raw.partition(b"\r\nFrom: ")
    assert trace.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test.local")
    assert b"with ESMTP" in trace and f"for <bob@{LOCAL}>".encode() in trace
    assert b"From: " + rest == BODY  # no Message-ID or Date added for a relay client
    assert (record.auth_user, record.client_addr, record.mail_from) == (
        "", "127.0.0.1", "sender@elsewhere.org")
    assert api.session.get(api.url(f"/queue/{record.id}")).json()["Uuid"] == uuid


def test_many_recipients_share_one_raw_file_and_one_uuid(
    receiver: Receiver, api: ApiServer
) -> None:
    rcpts = [f"alice@{LOCAL}", f"bob@{LOCAL}", "x1@catchall.test"]
    with receiver.smtp() as client:
        uuid = send(client, "sender@elsewhere.org", rcpts)
    listed = [r for r in api.session.get(api.url("/queue")).json() if r["Uuid"] == uuid]
    assert sorted(r["RcptTo"] for r in listed) == sorted(rcpts)
    assert len({r["Key"] for r in listed}) == 1
    assert receiver.queue.layout.message_raw(uuid).stat().st_nlink == 4


@pytest.mark.parametrize(
    ("rcpt", "code", "enhanced"),
    [
        (f"nobody@{LOCAL}", 550, "5.1.1"),
        ("someone@remote.example", 554, "5.7.1"),
        ("not an address", 501, "5.1.3"),
        ("@nolocal.test", 501, "5.1.3"),
    ],
)
def test_recipients_refused_at_rcpt_time(
    receiver: Receiver, rcpt: str, code: int, enhanced: str
) -> None:
    with receiver.smtp() as client:
        client.ehlo()
        client.mail("sender@elsewhere.org")
        reply = client.rcpt(rcpt)
        assert reply[0] == code and reply[1].decode().startswith(enhanced), reply


def authenticated(receiver: Receiver, login: str, method: str = "PLAIN") -> smtplib.SMTP:
    client = receiver.smtp()
    client.starttls(context=receiver.tls())
    client.ehlo()
    client.user, client.password = login, "password1"
    code, text = client.auth(method, getattr(client, f"auth_{method.lower()}"))
    assert code == 235, text
    return client


@pytest.mark.parametrize("method", ["PLAIN", "LOGIN"])
def test_auth_with_relay_right_may_relay(receiver: Receiver, method: str) -> None:
    with authenticated(receiver, f"alice@{LOCAL}", method) as client:
        uuid = send(client, f"alice@{LOCAL}", ["someone@remote.example"])
    [record] = queued(receiver, uuid)
    assert record.auth_user == f"alice@{LOCAL}"
    trace = receiver.queue.read_raw(record.id).split(b"\r\n\r\n")[0]
    assert b"with ESMTPSA" in trace and b"Message-ID: <" in trace and b"Date: " in trace


def test_auth_without_relay_right_may_not_relay(receiver: Receiver) -> None:
    with authenticated(receiver, f"bob@{LOCAL}") as client:
        client.mail(f"bob@{LOCAL}")
        assert client.rcpt("someone@remote.example")[0] == 554
        assert client.rcpt(f"alice@{LOCAL}")[0] == 250


def test_bad_credentials_get_535_and_then_the_door(receiver: Receiver) -> None:
    client = receiver.smtp()
    client.starttls(context=receiver.tls())
    client.ehlo()
    client.user, client.password = f"alice@{LOCAL}", "wrong password"
    for _ in range(2):
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("PLAIN", client.auth_plain)
        assert refused.value.smtp_code == 535
    with pytest.raises(smtplib.SMTPAuthenticationError) as closed:
        client.auth("PLAIN", client.auth_plain)
    assert closed.value.smtp_code == 421
    with pytest.raises((smtplib.SMTPException, OSError)):
        client.noop()
    client.close()


def test_size_limit_is_enforced_at_mail_and_at_data(receiver: Receiver) -> None:
    with receiver.smtp() as client:
        client.ehlo()
        assert client.mail("a@elsewhere.org", ["SIZE=50000"])[0] == 552
        client.rset()
        client.mail("a@elsewhere.org")
        client.rcpt(f"bob@{LOCAL}")
        code, text = client.data(BODY + (b"x" * 70 + b"\r\n") * 400)
        assert (code, text[:5]) == (552, b"5.3.4")


def test_too_many_recipients_get_452(receiver: Receiver) -> None:
    with receiver.smtp() as client:
        client.ehlo()
        client.mail("a@elsewhere.org")
        codes = [client.rcpt(f"r{n}@catchall.test")[0] for n in range(6)]
    assert codes == [250] * 5 + [452]


def test_null_sender_is_accepted(receiver: Receiver) -> None:
    with receiver.smtp() as client:
        uuid = send(client, "<>", [f"bob@{LOCAL}"])
    assert queued(receiver, uuid)[0].mail_from == ""


def test_pipelined_commands_get_their_replies_in_order(receiver: Receiver) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220")
        sock.sendall(b"EHLO pipe.test\r\n")
        while not stream.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<a@elsewhere.org>\r\nRCPT TO:<bob@" + LOCAL.encode()
                     + b">\r\nRCPT TO:<nobody@" + LOCAL.encode() + b">\r\nDATA\r\n")
        replies = [stream.readline()[:3] for _ in range(4)]
        assert replies == [b"250", b"250", b"550", b"354"]
        sock.sendall(b"Subject: piped\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert stream.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert stream.readline().startswith(b"221")


def test_disconnect_in_the_middle_of_data_queues_nothing(receiver: Receiver) -> None:
    before = list(receiver.queue.iter_ids())
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"HELO cut.test\r\nMAIL FROM:<a@elsewhere.org>\r\n"
                     b"RCPT TO:<bob@" + LOCAL.encode() + b">\r\nDATA\r\n")
        for _ in range(4):
            stream.readline()
        sock.sendall(b"Subject: cut\r\n\r\nhalf a message")
    assert wait_until(lambda: True, timeout=0.5)
    assert list(receiver.queue.iter_ids()) == before


def test_relay_networks_relay_and_auth_works_without_tls_when_allowed(
    loose_receiver: Receiver,
) -> None:
    with loose_receiver.smtp() as client:
        uuid = send(client, "a@elsewhere.org", ["someone@remote.example"])
    assert queued(loose_receiver, uuid)
    with loose_receiver.smtp() as client:
        client.ehlo()
        assert client.has_extn("auth")
        client.login(f"alice@{LOCAL}", "password1")


def test_a_transaction_logs_one_line_and_no_protocol_trace(loose_receiver: Receiver) -> None:
    """One line per transaction, as Postfix's smtpd: aiosmtpd's per-command INFO lines
    ("mail.log") would be ten synchronous writes per message on the hot path."""
    log = loose_receiver.log
    before = log.read_bytes()
    with loose_receiver.smtp() as client:
        uuid = send(client, "a@elsewhere.org", [f"bob@{LOCAL}"])
    assert wait_until(lambda: uuid.encode() in log.read_bytes())
    assert wait_until(lambda: loose_receiver.raw().close() is None)  # one more session ends
    new_lines = log.read_bytes()[len(before):].decode().splitlines()
    assert [line for line in new_lines if "mail.log" in line] == []
    assert len([line for line in new_lines if "smtp_receiver" in line]) == 1, new_lines


def test_queue_write_failure_answers_451_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    env = tmail_env(tmp_path)
    add_users(env)
    server = start_receiver(env, tmp_path / "receiver.log")
    try:
        tmp_dir = server.queue.layout.tmp
        tmp_dir.rmdir()
        tmp_dir.write_bytes(b"")  # the queue's tmp/ is now a file: every write fails
        with server.smtp() as client:
            client.ehlo()
            client.mail("a@elsewhere.org")
            client.rcpt(f"bob@{LOCAL}")
            code, text = client.data(BODY)
        assert (code, text[:5]) == (451, b"4.3.0")
        assert list(server.queue.iter_ids()) == []
    finally:
        stop(server.process)


def run_sendmail(env: dict[str, str], message: bytes, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "tmail", "sendmail", *args], cwd=REPO, env=env,
                          input=message, capture_output=True, timeout=60, check=False)


def test_sendmail_queues_from_a_local_program(tmp_path: Path) -> None:
    env = tmail_env(tmp_path)
    store = QueueStore(tmail_config.load(env).queue_dir)
    message = b"To: a@x.org\nCc: Bee <b@y.org>\nBcc: c@z.org\nSubject: cron\n\nreport\n"
    assert run_sendmail(env, message, "-t", "-f", "cron@host.test").returncode == 0
    records = list(store.iter_records())
    assert sorted(r.rcpt_to for r in records) == ["a@x.org", "b@y.org", "c@z.org"]
    raw = store.read_raw(records[0].id)
    assert raw.startswith(b"Received: by mx.test.local (tmail, from local program uid")
    assert b"Bcc" not in raw and raw.endswith(b"Subject: cron\r\n\r\nreport\r\n")
    assert records[0].mail_from == "cron@host.test" and records[0].auth_user == ""

    assert run_sendmail(env, b"Subject: x\n\ny\n", "root").returncode == 0
    assert run_sendmail(env, b"Subject: x\n\ny\n").returncode == 64


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_worker_processes_share_the_port_and_are_restarted(tmp_path: Path) -> None:
    import os
    import signal

    receiver = start_receiver(tmail_env(tmp_path, TMAIL_SMTP_PROCESSES="2",
                                        TMAIL_LOCAL_DOMAINS=LOCAL),
                              tmp_path / "receiver.log")
    try:
        assert wait_until(lambda: len(child_pids(receiver.process.pid)) == 2)
        first = child_pids(receiver.process.pid)[0]
        os.kill(first, signal.SIGKILL)  # a worker dies: another takes its place
        assert wait_until(lambda: first not in child_pids(receiver.process.pid)
                          and len(child_pids(receiver.process.pid)) == 2, 10)
        add_users(receiver.env)
        for _ in range(6):  # every connection is answered, whichever worker gets it
            with receiver.smtp() as client:
                send(client, "s@sender.test", [f"bob@{LOCAL}"])
        assert len(list(receiver.queue.iter_ids())) == 6
        workers = child_pids(receiver.process.pid)
        receiver.process.kill()  # even a parent killed outright takes its workers along
        receiver.process.wait()
        assert wait_until(lambda: not any(_alive(pid) for pid in workers), 10)
    finally:
        stop(receiver.process)


@pytest.mark.parametrize("arg", [
    "<a@b.c>", " <a@b.c> SIZE=100", "<a.b+c@d-e.f> BODY=8BITMIME", "<>", "<a..b@c.d>",
    "<.a@b.c>", '<"q s"@b.c>', "a@b.c", "<a@b.c>SIZE=1", "<a@[1.2.3.4]>",
    "<" + "x" * 65 + "@b.c>", "<a@b.c> ", "<a@b.c>\tX=1", "<a@b.c> (note) X=1",
    "<a@b.c>  SIZE=1  BODY=7BIT", "<a@b@c.d>", "<a b@c.d>",
])
def test_the_path_parser_reads_addresses_as_aiosmtpd_did(arg: str) -> None:
    """The receiver parsed MAIL/RCPT paths with aiosmtpd until it had its own protocol: a
    client sees the same address (and parameters) now, fast path or not."""
    from aiosmtpd.smtp import SMTP  # the test sink's library: the reference

    from smtp_receiver.checks import split_path

    reference = SMTP.__new__(SMTP)
    reference.local_part_limit = 64
    address, rest = reference._getaddr(arg)
    assert split_path(arg) == (address, (rest or "").strip())


def test_a_domain_created_through_the_api_receives_mail_at_once(
    receiver: Receiver, api: ApiServer
) -> None:
    with receiver.smtp() as client:
        client.ehlo()
        client.mail("sender@elsewhere.org")
        assert client.rcpt(f"bob@{LOCAL}")[0] == 250  # the receiver knows its domains now
        created = api.session.post(api.url("/users/catchall@new-api.example"), json={
            "passwd": "password1", "haveMailbox": True, "isCatchall": True})
        assert created.status_code == 201, created.text
        assert client.rcpt("anyone@new-api.example")[0] == 250


def test_a_user_created_with_the_cli_receives_mail_at_once(receiver: Receiver) -> None:
    with receiver.smtp() as client:
        client.ehlo()
        client.mail("sender@elsewhere.org")
        assert client.rcpt(f"bob@{LOCAL}")[0] == 250
        done = subprocess.run(
            [sys.executable, "-m", "tmail", "users", "add", "carol@new-cli.example",
             "--password", "password1", "--mailbox"],
            cwd=REPO, env=receiver.env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert client.rcpt("carol@new-cli.example")[0] == 250
        assert client.rcpt("Carol@NEW-CLI.example")[0] == 250
        assert client.rcpt("dave@new-cli.example")[0] == 550
