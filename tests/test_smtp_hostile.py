"""What the internet sends to port 25: bytes that are not UTF-8, bare CR and LF, loops, and
exceptions. Each gets a clear reply with an enhanced status code, harms no other session
and leaves nothing behind. A real receiver subprocess, raw sockets on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stop, tmail_env
from tests.smtp_helpers import (
    LOCAL,
    RawClient,
    Receiver,
    add_users,
    queued_raw,
    start_receiver,
    without_our_headers,
)

BOB = b"bob@" + LOCAL.encode()


def _receiver(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> Receiver:
    data = tmp_path_factory.mktemp(name)
    environment = tmail_env(data, **env)
    add_users(environment)
    return start_receiver(environment, data / "receiver.log")


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """Defaults: SMTPUTF8 off, bare newlines refused, TMAIL_MAX_HOPS=50."""
    server = _receiver(tmp_path_factory, "mx")
    yield server
    stop(server.process)


@pytest.fixture(scope="module")
def utf8_mx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    server = _receiver(tmp_path_factory, "utf8", TMAIL_SMTP_SMTPUTF8="true",
                       TMAIL_SMTP_BARE_NEWLINE="normalize")
    yield server
    stop(server.process)


def ehlo(client: RawClient, name: bytes = b"client.test") -> bytes:
    reply = client.command(b"EHLO " + name)
    assert reply.startswith(b"250"), reply
    return reply


# --- item 1: addresses that are not UTF-8, or not ASCII without SMTPUTF8 ------------------


@pytest.mark.parametrize(("commands", "expected"), [
    ([b"MAIL FROM:<\xff@x.org>"], b"553 5.1.7"),
    ([b"MAIL FROM:<a@x.org>", b"RCPT TO:<\xff@" + LOCAL.encode() + b">"], b"553 5.1.3"),
    ([b"MAIL FROM:<j\xc3\xb6rg@x.org>"], b"553 5.6.7"),
    ([b"MAIL FROM:<a@x.org>", b"RCPT TO:<j\xc3\xb6rg@" + LOCAL.encode() + b">"], b"553 5.6.7"),
    ([b"MAIL FROM:<j\xc3\xb6rg@x.org> SMTPUTF8"], b"555 5.5.4"),
    ([b"MAIL FROM:<a@x.org>", b"RCPT TO:<a\x01b@" + LOCAL.encode() + b">"], b"501 5.1.3"),
])
def test_bad_addresses_are_refused_at_mail_and_rcpt(
    mx: Receiver, commands: list[bytes], expected: bytes
) -> None:
    with mx.raw() as client:
        ehlo(client)
        *before, last = commands
        for line in before:
            assert client.command(line).startswith(b"250")
        assert client.command(last).startswith(expected)
        assert client.command(b"QUIT").startswith(b"221")  # the session is still fine


def test_a_non_utf8_sender_never_fails_the_other_sessions_of_its_batch(mx: Receiver) -> None:
    """The 0xff sender used to reach the queue and fail its whole group-commit batch."""
    replies: list[bytes] = []

    def good_session() -> None:
        with mx.raw() as client:
            ehlo(client)
            replies.append(client.transaction(b"Subject: good\r\n\r\nhi\r\n.\r\n"))

    with mx.raw() as bad:
        ehlo(bad)
        threads = [threading.Thread(target=good_session) for _ in range(10)]
        for thread in threads:
            thread.start()
        assert bad.command(b"MAIL FROM:<\xff@x.org>").startswith(b"553 5.1.7")
        for thread in threads:
            thread.join(30)
    assert len(replies) == 10 and all(r.startswith(b"250 2.0.0") for r in replies), replies
    assert mx.leftovers() == []


def test_smtputf8_is_not_offered_while_it_is_switched_off(mx: Receiver) -> None:
    with mx.raw() as client:
        assert b"SMTPUTF8" not in ehlo(client)


def test_with_smtputf8_on_utf8_addresses_need_the_parameter(utf8_mx: Receiver) -> None:
    with utf8_mx.raw() as client:
        assert b"250-SMTPUTF8" in ehlo(client)
        assert client.command(b"MAIL FROM:<j\xc3\xb6rg@x.org>").startswith(b"553 5.6.7")
        assert client.command(b"MAIL FROM:<\xff@x.org> SMTPUTF8").startswith(b"553 5.1.7")
        assert client.command(b"MAIL FROM:<j\xc3\xb6rg@x.org> SMTPUTF8").startswith(b"250")
        assert client.command(b"RCPT TO:<" + BOB + b">").startswith(b"250")
        assert client.command(b"DATA").startswith(b"354")
        client.send(b"Subject: utf-8\r\n\r\nhi\r\n.\r\n")
        reply = client.reply()
    assert reply.startswith(b"250 2.0.0"), reply
    uuid = reply.decode().split()[-1]
    [record] = [r for r in utf8_mx.queue.iter_records() if r.uuid == uuid]
    assert record.mail_from == "jörg@x.org"


def test_an_unexpected_error_answers_451_and_the_session_goes_on(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A users database that became unreadable under the receiver: RCPT cannot be decided."""
    server = _receiver(tmp_path_factory, "broken")
    try:
        config_db = Path(server.env["TMAIL_DATA_DIR"]) / "users.db"
        with server.raw() as client:
            ehlo(client)
            assert client.command(b"MAIL FROM:<a@x.org>").startswith(b"250")
            for suffix in ("-wal", "-shm"):
                Path(f"{config_db}{suffix}").unlink(missing_ok=True)
            broken = config_db.with_name("broken.db")  # put in place as a restore would:
            broken.write_bytes(b"this is not a database" * 1000)  # a new file, not the
            broken.replace(config_db)  # open one written over under SQLite's feet
            reply = client.command(b"RCPT TO:<someone@" + LOCAL.encode() + b">")
            assert reply.startswith(b"451 4.3.0"), reply
            assert client.command(b"NOOP").startswith(b"250")
    finally:
        stop(server.process)


# --- item 2: bare CR and LF ---------------------------------------------------------------


@pytest.mark.parametrize("name", [b"bad\rname.test", b"-x.test", b"a..b", b"bad name",
                                  b"[300.1.1.1]", b"x" * 64 + b".test", b"\xff.test"])
def test_an_invalid_helo_name_gets_501(utf8_mx: Receiver, name: bytes) -> None:
    """(On the receiver that normalises bare newlines: the other one refuses the line.)"""
    with utf8_mx.raw() as client:
        assert client.command(b"EHLO " + name).startswith(b"501 5.5.2")
        assert client.command(b"MAIL FROM:<a@x.org>").startswith(b"503 5.5.1")
        assert client.command(b"HELO " + name).startswith(b"501 5.5.2")


@pytest.mark.parametrize("name", [b"DESKTOP-1A2B", b"mail.example.org", b"mail.example.org.",
                                  b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"host_1.example"])
def test_valid_helo_names_are_accepted(mx: Receiver, name: bytes) -> None:
    with mx.raw() as client:
        assert client.command(b"EHLO " + name).startswith(b"250")
        assert client.command(b"HELO " + name).startswith(b"250")


@pytest.mark.parametrize("line", [b"NOOP\n", b"NOOP\rx\r\n", b"EHLO a.test\n"])
def test_a_command_line_with_a_bare_newline_is_refused_and_closed(
    mx: Receiver, line: bytes
) -> None:
    with mx.raw() as client:
        client.send(line)
        assert client.reply().startswith(b"550 5.5.2")
        assert client.closed_by_server()


@pytest.mark.parametrize("body", [
    b"Subject: x\r\n\r\nbare\nline\r\n.\r\n",
    b"Subject: x\r\n\r\nbare\rline\r\n.\r\n",
    b"Subject: x\r\n\r\nsmuggled\n.\r\nMAIL FROM:<evil@x.org>\r\nRCPT TO:<bob@receiver.test>"
    b"\r\nDATA\r\nSubject: evil\r\n\r\nevil\r\n.\r\n",
    b"Subject: x\r\n\r\nsmuggled\r\n.\nMAIL FROM:<evil@x.org>\r\n\r\n.\r\n",
])
def test_data_with_a_bare_newline_is_refused_whole(mx: Receiver, body: bytes) -> None:
    before = sorted(mx.queue.iter_ids())
    with mx.raw() as client:
        ehlo(client)
        assert client.transaction(body).startswith(b"550 5.5.2")
        assert client.closed_by_server()
    assert sorted(mx.queue.iter_ids()) == before
    assert mx.leftovers() == []


def test_bare_newlines_can_be_normalised_instead(utf8_mx: Receiver) -> None:
    with utf8_mx.raw() as client:
        ehlo(client)
        reply = client.transaction(b"Subject: x\n\nbare\nline\rend\r\n..dot\n.\r\n"
                                   b"MAIL FROM:<not-a-command@x.org>\r\n.\r\n")
    assert reply.startswith(b"250"), reply
    assert without_our_headers(queued_raw(utf8_mx, reply)) == (  # only CRLF.CRLF ends DATA
        b"Subject: x\r\n\r\nbare\r\nline\r\nend\r\n.dot\r\n\r\n"
        b"MAIL FROM:<not-a-command@x.org>\r\n")


def test_client_values_never_add_lines_to_our_received_header(mx: Receiver) -> None:
    with mx.raw() as client:
        ehlo(client, b"client.test")
        reply = client.transaction(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    raw = queued_raw(mx, reply)
    assert raw.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test.local")
    assert without_our_headers(raw) == b"Subject: x\r\n\r\nhi\r\n"


# --- the DATA stream: transparency, framing, sizes ---------------------------------------


@pytest.mark.parametrize(("wire", "content"), [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"...x\r\n.\r\n", b"..x\r\n"),
    (b"Subject: a\r\n\r\n.x\r\n..\r\n.\r\n", b"Subject: a\r\n\r\nx\r\n.\r\n"),
    (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
    (b"Subject: a\r\n\r\n" + (b"..%05d" % 1 + b"y" * 990 + b"\r\n") * 2000 + b".\r\n",
     b"Subject: a\r\n\r\n" + (b".%05d" % 1 + b"y" * 990 + b"\r\n") * 2000),
])
def test_data_is_unstuffed_and_queued_byte_for_byte(
    mx: Receiver, wire: bytes, content: bytes
) -> None:
    with mx.raw() as client:
        ehlo(client)
        reply = client.transaction(wire)
        assert reply.startswith(b"250"), reply
        assert client.command(b"NOOP").startswith(b"250")  # framing kept: next command
    assert without_our_headers(queued_raw(mx, reply)) == content


def test_a_line_over_1000_octets_is_refused(mx: Receiver) -> None:
    with mx.raw() as client:
        ehlo(client)
        reply = client.transaction(b"Subject: x\r\n\r\n" + b"y" * 1001 + b"\r\n.\r\n")
        assert reply.startswith(b"500 5.5.2"), reply
        assert client.command(b"NOOP").startswith(b"250")
    assert mx.leftovers() == []


def test_a_message_over_the_size_limit_is_read_to_its_end_then_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = _receiver(tmp_path_factory, "small", TMAIL_MAX_MESSAGE_SIZE="100000")
    try:
        with server.raw() as client:
            ehlo(client)
            big = b"Subject: x\r\n\r\n" + (b"z" * 98 + b"\r\n") * 2000 + b".\r\n"
            assert client.transaction(big).startswith(b"552 5.3.4")
            assert client.command(b"NOOP").startswith(b"250")
        assert server.leftovers() == []
        assert list(server.queue.iter_ids()) == []
    finally:
        stop(server.process)


# --- item 3: mail loops -------------------------------------------------------------------


@pytest.mark.parametrize(("hops", "expected"), [(49, b"250 2.0.0"), (50, b"554 5.4.6")])
def test_too_many_received_headers_is_a_mail_loop(
    mx: Receiver, hops: int, expected: bytes
) -> None:
    trace = b"".join(b"Received: from hop%d.test by x.test; Mon, 1 Dec 2026 00:00:00 +0000\r\n"
                     % n for n in range(hops))
    with mx.raw() as client:
        ehlo(client)
        assert client.transaction(trace + b"Subject: loop\r\n\r\nx\r\n.\r\n").startswith(expected)


def test_an_empty_line_ends_the_headers_counted_for_loops(mx: Receiver) -> None:
    body_lines = b"".join(b"Received: quoted in the body %d\r\n" % n for n in range(60))
    with mx.raw() as client:
        ehlo(client)
        reply = client.transaction(b"Subject: x\r\n\r\n" + body_lines + b".\r\n")
    assert reply.startswith(b"250"), reply


def test_bytes_that_are_not_utf8_in_any_command_leave_no_traceback_in_the_log(
        mx: Receiver) -> None:
    """Every command's argument reaches a reply, a check or a log line: undecodable bytes
    (and what surrogateescape makes of them) must never make the logging itself fail."""
    logged = len(mx.log.read_bytes())
    with mx.raw() as client:
        for line in (b"HELO \xff\xfe.test", b"EHLO \xc3(", b"\xff\xfe FROM:<a@x.org>",
                     b"VRFY \xff@" + LOCAL.encode(), b"EHLO client.test",
                     b"AUTH PLAIN \xff\xfe", b"AUTH \xff", b"MAIL FROM:<a@x.org> \xff=1",
                     b"MAIL FROM:<a@x.org>", b"RCPT TO:<\xed\xa0\x80@" + LOCAL.encode() + b">",
                     b"RCPT TO:<bob@" + LOCAL.encode() + b"> NOTIFY=\xff", b"RSET",
                     b"HELP \xff", b"NOOP \xff"):
            reply = client.command(line)
            assert reply[:1] in b"2345", (line, reply)
    log = mx.log.read_bytes()[logged:]
    assert b"Traceback" not in log and b"Logging error" not in log, log.decode(errors="replace")
