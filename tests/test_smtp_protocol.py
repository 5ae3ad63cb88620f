"""The receiver's own SMTP protocol on the wire: a pipelined batch answered in one segment
(RFC 2920), pipelining past DATA refused, clear text pipelined after STARTTLS discarded,
over-long lines, an AUTH exchange cancelled. A real receiver, raw sockets on loopback."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import stop, tmail_env
from tests.smtp_helpers import LOCAL, RawClient, Receiver, add_users, start_receiver

BOB = b"bob@" + LOCAL.encode()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    data = tmp_path_factory.mktemp("protocol")
    env = tmail_env(data, TMAIL_SMTP_AUTH_REQUIRE_TLS="false")
    add_users(env)
    server = start_receiver(env, data / "receiver.log")
    yield server
    stop(server.process)


def first_segment(client: RawClient) -> bytes:
    """What one ``recv`` returns: the first segment the server wrote (a single write of a
    few hundred bytes arrives whole on loopback)."""
    return client.sock.recv(65536)


def test_a_pipelined_batch_is_answered_in_one_segment(receiver: Receiver) -> None:
    with receiver.raw() as client:
        client.send(b"EHLO pipe.test\r\n")
        ehlo = first_segment(client)
        assert ehlo.startswith(b"250-") and ehlo.endswith(b"250 HELP\r\n"), ehlo
        client.send(b"MAIL FROM:<a@elsewhere.org>\r\nRCPT TO:<" + BOB + b">\r\n"
                    b"RCPT TO:<nobody@" + LOCAL.encode() + b">\r\nDATA\r\n")
        replies = first_segment(client).split(b"\r\n")
        assert [line[:3] for line in replies] == [b"250", b"250", b"550", b"354", b""], replies
        client.send(b"Subject: piped\r\n\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n")
        final = first_segment(client).split(b"\r\n")
        assert [line[:3] for line in final] == [b"250", b"250", b"221", b""], final
        assert client.closed_by_server()


def test_a_message_pipelined_past_data_is_refused_and_the_session_ends(
    receiver: Receiver,
) -> None:
    """RFC 2920 §3.1: DATA ends a batch; content sent before our 354 is not a message we
    can trust the framing of (Postfix: smtpd_forbid_unauth_pipelining)."""
    before = sorted(receiver.queue.iter_ids())
    with receiver.raw() as client:
        assert client.command(b"EHLO eager.test").startswith(b"250")
        client.send(b"MAIL FROM:<a@elsewhere.org>\r\nRCPT TO:<" + BOB + b">\r\nDATA\r\n"
                    b"Subject: eager\r\n\r\nhi\r\n.\r\n")
        assert client.reply().startswith(b"250 2.1.0")
        assert client.reply().startswith(b"250 2.1.5")
        assert client.reply().startswith(b"554 5.5.0")
        assert client.closed_by_server()
    assert sorted(receiver.queue.iter_ids()) == before


def test_clear_text_pipelined_after_starttls_is_discarded(receiver: Receiver) -> None:
    """A man in the middle could inject commands behind STARTTLS (CVE-2011-0411)."""
    with receiver.raw() as client:
        assert client.command(b"EHLO tls.test").startswith(b"250")
        client.send(b"STARTTLS\r\nEHLO injected.test\r\nMAIL FROM:<evil@x.org>\r\n")
        assert client.reply().startswith(b"220")
        with receiver.tls().wrap_socket(client.sock, server_hostname="localhost") as tls:
            stream = tls.makefile("rb")
            tls.sendall(b"NOOP\r\n")
            assert stream.readline().startswith(b"250 2.0.0")  # NOOP's: nothing came before
            tls.sendall(b"MAIL FROM:<a@elsewhere.org>\r\n")
            assert stream.readline().startswith(b"503 5.5.1")  # EHLO again after STARTTLS
            stream.close()


@pytest.mark.parametrize("line", [b"NOOP " + b"x" * 600, b"NOOP " + b"x" * 200_000,
                                  b"RCPT TO:<" + b"x" * 600 + b"@" + LOCAL.encode() + b">"])
def test_an_over_long_command_line_gets_500_and_the_session_goes_on(
    receiver: Receiver, line: bytes
) -> None:
    with receiver.raw() as client:
        assert client.command(b"EHLO long.test").startswith(b"250")
        assert client.command(b"MAIL FROM:<a@elsewhere.org>").startswith(b"250")
        assert client.command(line).startswith(b"500 5.5.2 Error: command line too long")
        assert client.command(b"RCPT TO:<" + BOB + b">").startswith(b"250")


@pytest.mark.parametrize("command", [b"AUTH LOGIN", b"AUTH PLAIN"])
def test_an_auth_exchange_cancelled_with_a_star_gets_one_reply(
    receiver: Receiver, command: bytes
) -> None:
    with receiver.raw() as client:
        assert client.command(b"EHLO auth.test").startswith(b"250")
        assert client.command(command).startswith(b"334 ")
        assert client.command(b"*").startswith(b"501 5.7.0")
        assert client.command(b"NOOP").startswith(b"250")  # no second reply in between


def test_a_client_that_closes_in_the_middle_of_a_line_leaves_the_receiver_serving(
    receiver: Receiver,
) -> None:
    logged = len(receiver.log.read_bytes())
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.recv(1000)
        sock.sendall(b"EHLO half")
    with receiver.raw() as client:
        assert client.command(b"EHLO next.test").startswith(b"250")
    assert b"Traceback" not in receiver.log.read_bytes()[logged:]


def test_an_auth_line_may_carry_a_long_initial_response(receiver: Receiver) -> None:
    """RFC 4954 §4: up to 12,288 octets, past the 512 of other commands."""
    token = base64.b64encode(b"z" * 600 + b"\0bob@" + LOCAL.encode() + b"\0password1")
    with receiver.raw() as client:
        assert client.command(b"EHLO auth.test").startswith(b"250")
        assert client.command(b"AUTH PLAIN " + token).startswith(b"235 2.7.0")
