"""What one client may take: sessions, time, errors, guesses. A real receiver with small
limits, clients on distinct loopback addresses (127.0.0.x) so that tests do not share a
per-IP budget."""

from __future__ import annotations

import base64
import select
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stop, tmail_env, wait_until
from tests.smtp_helpers import LOCAL, RawClient, Receiver, add_users, start_receiver
from tmail import config as tmail_config

TIMEOUT = 3.0


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    data = tmp_path_factory.mktemp("tight")
    env = tmail_env(
        data,
        TMAIL_SMTP_MAX_SESSIONS="8",
        TMAIL_SMTP_MAX_SESSIONS_PER_IP="3",
        TMAIL_SMTP_TIMEOUT=str(TIMEOUT),
        TMAIL_SMTP_MIN_DATA_RATE="1000000",
        TMAIL_SMTP_HARD_ERROR_LIMIT="5",
        TMAIL_SMTP_JUNK_COMMAND_LIMIT="3",
        TMAIL_SMTP_REJECTED_RCPT_LIMIT="3",
        TMAIL_SMTP_AUTH_FAILURE_LIMIT="2",
        TMAIL_SMTP_AUTH_REQUIRE_TLS="false",
    )
    add_users(env)
    server = start_receiver(env, data / "receiver.log")
    yield server
    stop(server.process)


def greeting_when_free(receiver: Receiver, source: str) -> RawClient:
    """A new session from ``source`` once the server has counted the last ones out."""
    clients: list[RawClient] = []

    def admitted() -> bool:
        client = receiver.raw(source)
        if client.greeting.startswith(b"220"):
            clients.append(client)
            return True
        client.close()
        return False

    assert wait_until(admitted, timeout=10)
    return clients[0]


def test_sessions_per_client_ip_are_limited(tight: Receiver) -> None:
    clients = [tight.raw("127.0.0.21") for _ in range(3)]
    try:
        assert all(c.greeting.startswith(b"220") for c in clients)
        with tight.raw("127.0.0.21") as fourth:
            assert fourth.greeting.startswith(b"421 4.7.0"), fourth.greeting
            assert fourth.closed_by_server()
        with tight.raw("127.0.0.22") as other_ip:
            assert other_ip.greeting.startswith(b"220")
        clients.pop().close()
        greeting_when_free(tight, "127.0.0.21").close()
    finally:
        for client in clients:
            client.close()


def test_sessions_per_process_are_limited(tight: Receiver) -> None:
    clients = [tight.raw(f"127.0.0.{31 + n // 3}") for n in range(8)]
    try:
        assert all(c.greeting.startswith(b"220") for c in clients), [c.greeting for c in clients]
        with tight.raw("127.0.0.39") as ninth:
            assert ninth.greeting.startswith(b"421 4.7.0 mx.test.local Error: too many conn")
    finally:
        for client in clients:
            client.close()


def test_a_command_line_must_arrive_whole_within_the_timeout(tight: Receiver) -> None:
    with greeting_when_free(tight, "127.0.0.41") as client:
        started = time.monotonic()
        for byte in b"NOOP\r\n":  # each byte arrives in time, the whole line does not
            try:
                client.send(bytes([byte]))
            except OSError:  # closed already
                break
            time.sleep(TIMEOUT / 4)
        reply = client.reply()
        assert reply.startswith(b"421 4.4.2"), reply
        assert time.monotonic() - started >= TIMEOUT


def test_the_data_phase_has_a_deadline_too(tight: Receiver) -> None:
    before = sorted(tight.queue.iter_ids())
    with greeting_when_free(tight, "127.0.0.42") as client:
        client.command(b"EHLO slow.test")
        assert client.command(b"MAIL FROM:<a@x.org>").startswith(b"250")
        assert client.command(b"RCPT TO:<bob@" + LOCAL.encode() + b">").startswith(b"250")
        assert client.command(b"DATA").startswith(b"354")
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT + 5:  # a line every half second
            client.send(b"Subject: drip\r\n")
            if select.select([client.sock], [], [], 0.5)[0]:
                break
        reply = client.reply()
        assert reply.startswith(b"421 4.4.2"), reply
    assert sorted(tight.queue.iter_ids()) == before
    assert tight.leftovers() == []


def test_the_session_ends_after_too_many_errors(tight: Receiver) -> None:
    with greeting_when_free(tight, "127.0.0.51") as client:
        replies = [client.command(b"MAIL FROM:<a@x.org>") for _ in range(5)]
        assert all(r.startswith(b"503 5.5.1") for r in replies), replies
        assert client.reply().startswith(b"421 4.7.0 mx.test.local Error: too many errors")
        assert client.closed_by_server()


def test_junk_commands_beyond_the_limit_count_as_errors(tight: Receiver) -> None:
    with greeting_when_free(tight, "127.0.0.52") as client:
        replies = [client.command(b"NOOP") for _ in range(8)]
        assert all(r.startswith(b"250") for r in replies[:7]), replies
        assert replies[7].startswith(b"421 4.7.0"), replies
        assert client.closed_by_server()


def test_rejected_recipients_are_capped(tight: Receiver) -> None:
    with greeting_when_free(tight, "127.0.0.61") as client:
        client.command(b"EHLO harvest.test")
        assert client.command(b"MAIL FROM:<a@x.org>").startswith(b"250")
        for name in (b"aaron", b"abby", b"abel"):
            reply = client.command(b"RCPT TO:<" + name + b"@" + LOCAL.encode() + b">")
            assert reply.startswith(b"550 5.1.1"), reply
        reply = client.command(b"RCPT TO:<bob@" + LOCAL.encode() + b">")
        assert reply.startswith(b"421 4.7.0"), reply
        assert client.closed_by_server()


def auth_plain(client: RawClient, password: bytes) -> bytes:
    token = base64.b64encode(b"\0bob@" + LOCAL.encode() + b"\0" + password)
    return client.command(b"AUTH PLAIN " + token)


def test_auth_failures_are_counted_per_client_ip_across_sessions(tight: Receiver) -> None:
    with greeting_when_free(tight, "127.0.0.81") as client:
        client.command(b"EHLO guess.test")
        for _ in range(2):
            assert auth_plain(client, b"wrong").startswith(b"535 5.7.8")
        assert auth_plain(client, b"password1").startswith(b"454 4.7.0")
    with greeting_when_free(tight, "127.0.0.81") as again:  # a new session does not help
        again.command(b"EHLO guess.test")
        assert auth_plain(again, b"password1").startswith(b"454 4.7.0")
    with greeting_when_free(tight, "127.0.0.82") as other:
        other.command(b"EHLO other.test")
        assert auth_plain(other, b"password1").startswith(b"235 2.7.0")


def test_starttls_forgets_an_authentication_made_in_clear_text(tight: Receiver) -> None:
    """RFC 3207 §4.2: after STARTTLS the server discards what it knew, AUTH included."""
    with smtplib.SMTP("127.0.0.1", tight.port, local_hostname="tls.test", timeout=10,
                      source_address=("127.0.0.91", 0)) as client:
        client.ehlo()
        client.login(f"alice@{LOCAL}", "password1")  # alice may relay
        client.mail("alice@" + LOCAL)
        assert client.rcpt("someone@remote.example")[0] == 250
        client.rset()
        client.starttls(context=tight.tls())
        client.ehlo()
        client.mail("alice@" + LOCAL)
        assert client.rcpt("someone@remote.example")[0] == 554


@pytest.mark.parametrize(("variable", "value"), [
    ("TMAIL_SMTP_SMTPUTF8", "maybe"), ("TMAIL_SMTP_BARE_NEWLINE", "accept"),
    ("TMAIL_MAX_HOPS", "0"), ("TMAIL_SMTP_MAX_SESSIONS", "-1"),
    ("TMAIL_SMTP_MAX_SESSIONS_PER_IP", "x"), ("TMAIL_SMTP_TIMEOUT", "0"),
    ("TMAIL_SMTP_MIN_DATA_RATE", "0"), ("TMAIL_SMTP_HARD_ERROR_LIMIT", "0"),
    ("TMAIL_SMTP_JUNK_COMMAND_LIMIT", ""), ("TMAIL_SMTP_REJECTED_RCPT_LIMIT", "1.5"),
    ("TMAIL_SMTP_AUTH_FAILURE_LIMIT", "0"), ("TMAIL_SMTP_AUTH_FAILURE_WINDOW", "-5"),
])
def test_a_bad_receiver_setting_is_refused_by_name(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(tmail_config.ConfigError, match=variable):
        tmail_config.load(tmail_env(tmp_path, **{variable: value}))


def test_a_client_that_never_reads_its_replies_is_cut_after_the_timeout(tight: Receiver) -> None:
    """Replies the client leaves unread fill the socket, then the receiver's buffer: the
    session waits for room at most TMAIL_SMTP_TIMEOUT, then ends (its 421 unread too)."""
    with greeting_when_free(tight, "127.0.0.71") as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        outcome: list[BaseException] = []

        def flood() -> None:
            try:
                for _ in range(2000):  # about 60 MB of EHLO replies asked for, none read
                    client.sock.sendall(b"EHLO reader.test\r\n" * 1000)
            except OSError as exc:
                outcome.append(exc)

        sender = threading.Thread(target=flood, daemon=True)
        started = time.monotonic()
        sender.start()
        sender.join(60)
        elapsed = time.monotonic() - started
        assert outcome and not sender.is_alive(), "the receiver kept the session open"
        assert elapsed < 8 * TIMEOUT, elapsed  # waiting for room, then the 421 unread
    with greeting_when_free(tight, "127.0.0.72") as other:  # the receiver serves on
        assert other.command(b"NOOP").startswith(b"250")
