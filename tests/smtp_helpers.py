"""The SMTP receiver as a real subprocess on loopback, and a raw-socket client for it.

smtplib cannot send what a hostile client sends (a lone 0xff byte, a bare CR, a line cut in
the middle), so the tests that need it talk through :class:`RawClient`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until
from tmail import config as tmail_config
from tmail.queue import QueueStore
from tmail.users import open_store

LOCAL = "receiver.test"


@dataclass
class Receiver:
    port: int
    env: dict[str, str]
    queue: QueueStore
    cert: Path
    process: subprocess.Popen[bytes]
    log: Path

    def smtp(self):  # type: ignore[no-untyped-def]
        import smtplib

        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=10)

    def raw(self, source: str = "127.0.0.1", timeout: float = 10) -> RawClient:
        return RawClient(self.port, source, timeout)

    def tls(self):  # type: ignore[no-untyped-def]
        import ssl

        return ssl.create_default_context(cafile=str(self.cert))

    def leftovers(self) -> list[str]:
        """Files in the queue's tmp/ (a message half-written and not cleaned up); the empty
        spares a receiver makes ahead (``*.new``, tmail/queue/spares.py) are not."""
        return sorted(path.name for path in self.queue.layout.tmp.iterdir()
                      if path.suffix != ".new")


def start_receiver(env: dict[str, str], log: Path) -> Receiver:
    port = _free_port()
    env = {**env, "TMAIL_SMTP_BIND": f"127.0.0.1:{port}"}
    env.setdefault("TMAIL_SMTP_PROCESSES", "1")
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "smtp_receiver"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail("smtp_receiver exited:\n" + log.read_text())
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    assert wait_until(listening), log.read_text()
    config = tmail_config.load(env)
    return Receiver(port, env, QueueStore(config.queue_dir), config.tls_cert_path, process, log)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_users(env: dict[str, str]) -> None:
    config = tmail_config.load(env)
    users = open_store(config)
    for login, relay, catchall in [(f"alice@{LOCAL}", True, False),
                                   (f"bob@{LOCAL}", False, False),
                                   ("any@catchall.test", False, True)]:
        if users.get(login) is None:
            users.create(login, "password1", auth_relay=relay, have_mailbox=True,
                         is_catchall=catchall)


class RawClient:
    """One SMTP connection on a plain socket, bytes in and bytes out."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.stream = self.sock.makefile("rb")
        self.greeting = self.reply()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (every line of a multi-line one), CRLFs kept; b"" at EOF."""
        lines = []
        while True:
            line = self.stream.readline()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def closed_by_server(self, timeout: float = 10) -> bool:
        """The server closed the connection (EOF, or a reset)."""
        self.sock.settimeout(timeout)
        try:
            return self.stream.read() == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def transaction(self, body: bytes, rcpt: bytes = b"bob@" + LOCAL.encode(),
                    sender: bytes = b"a@elsewhere.org") -> bytes:
        """EHLO (once), MAIL, RCPT, DATA with ``body`` (already dot-stuffed and ended with
        the final CRLF.CRLF by the caller): the final reply."""
        for line in (b"MAIL FROM:<" + sender + b">", b"RCPT TO:<" + rcpt + b">"):
            reply = self.command(line)
            assert reply.startswith(b"250"), reply
        assert self.command(b"DATA").startswith(b"354")
        self.send(body)
        return self.reply()


def queued_raw(receiver: Receiver, reply: bytes) -> bytes:
    """The raw message the ``250 ... queued as <uuid>`` reply refers to."""
    uuid = reply.decode().split()[-1]
    [record] = [r for r in receiver.queue.iter_records() if r.uuid == uuid][:1]
    raw = receiver.queue.read_raw(record.id)
    assert raw is not None
    return raw


def without_our_headers(raw: bytes) -> bytes:
    """The client's bytes: what follows our Received: header (a folded one of three lines
    when there is one recipient)."""
    assert raw.startswith(b"Received: ")
    lines = raw.split(b"\r\n")
    index = 1
    while lines[index][:1] in (b"\t", b" "):
        index += 1
    return b"\r\n".join(lines[index:])

