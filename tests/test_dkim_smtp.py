"""DKIM end to end: a real SMTP submission, the queue, the runner and the loopback sink; the
bytes the sink receives verify with dkimpy against the record ``GET /dkim/DOMAIN`` gives.

Trusted submitters (an authenticated user, over STARTTLS on the MX listener; a client in
TMAIL_RELAY_NETWORKS, here 127.0.0.2; ``sendmail``) get their mail signed for the ``From:``
domain; an anonymous client's mail is never signed, whatever its ``From:``."""

from __future__ import annotations

import secrets
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import REPO, ApiServer, start_api, stop
from tests.dkim_helpers import signature_tags, verifies
from tests.sink import Sink
from tests.smtp_helpers import Receiver, queued_raw, start_receiver

TRUSTED_HOST = "127.0.0.2"
PASSWORD = "password1"


@dataclass
class Stack:
    api: ApiServer
    receiver: Receiver
    sink: Sink

    def domain(self, algorithm: str | None) -> tuple[str, list[tuple[str, str]]]:
        """A new local domain with a user ``u@`` (and a key of ``algorithm``): the records
        to publish, as GET /dkim/DOMAIN gives them."""
        name = f"s{secrets.token_hex(4)}.example"
        session = self.api.session
        assert session.post(self.api.url(f"/domains/{name}"), json={"local": True}).ok
        assert session.post(self.api.url(f"/users/u@{name}"),
                            json={"passwd": PASSWORD, "authRelay": True,
                                  "haveMailbox": True}).ok
        if algorithm is None:
            return name, []
        assert session.post(self.api.url(f"/dkim/{name}"), json={"algorithm": algorithm}).ok
        key = session.get(self.api.url(f"/dkim/{name}")).json()
        return name, [(key["DnsName"], key["DnsValue"])]

    def delivered(self, subject: str) -> bytes:
        """Run the queue once; the message with ``subject`` as the sink received it."""
        done = subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO,
                              env=self.api.env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        found = [m.content for m in self.sink.messages if subject.encode() in m.content]
        assert len(found) == 1, [m.content[:200] for m in self.sink.messages]
        return found[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("dkim")
    with Sink() as sink:
        api = start_api(data, TMAIL_ROUTES=sink.route, TMAIL_RELAY_NETWORKS=f"{TRUSTED_HOST}/32")
        try:
            receiver = start_receiver(api.env, data / "receiver.log")
            try:
                yield Stack(api, receiver, sink)
            finally:
                stop(receiver.process)
        finally:
            stop(api.process)


def message(domain: str, subject: str) -> bytes:
    return (f"From: User <u@{domain}>\r\nTo: friend@remote.example\r\nSubject: {subject}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
            f"Hello  there,\r\n..and a line with a dot.\r\n\r\n").encode()


def submit(stack: Stack, body: bytes, sender: str, rcpt: str, *, login: str | None = None,
           source: str = "127.0.0.1") -> bytes:
    """One SMTP transaction (AUTH over STARTTLS when ``login``): the final reply."""
    with smtplib.SMTP("127.0.0.1", stack.receiver.port, local_hostname="client.test",
                      timeout=30, source_address=(source, 0)) as client:
        client.ehlo()
        if login:
            client.starttls(context=stack.receiver.tls())
            client.ehlo()
            client.login(login, PASSWORD)
        client.mail(sender)
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        code, text = client.data(body)
        assert code == 250, text
        return b"%d %s" % (code, text)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize("submitter", ["authenticated", "relay-network"])
def test_trusted_mail_reaches_the_next_hop_signed_for_its_from_domain(
        stack: Stack, algorithm: str, submitter: str) -> None:
    domain, records = stack.domain(algorithm)
    subject = f"signed {secrets.token_hex(4)}"
    if submitter == "authenticated":
        submit(stack, message(domain, subject), f"u@{domain}", "friend@remote.example",
               login=f"u@{domain}")
    else:
        submit(stack, message(domain, subject), f"app@{domain}", "friend@remote.example",
               source=TRUSTED_HOST)
    received = stack.delivered(subject)
    assert received.startswith(b"DKIM-Signature: ")
    assert verifies(received, records)
    tags = signature_tags(received)
    assert (tags["d"], tags["c"]) == (domain, "relaxed/relaxed")
    signed = tags["h"].split(":")  # Date and Message-ID too when the receiver added them
    assert [name for name in signed if name not in ("date", "message-id")] == [
        "from", "to", "subject", "mime-version", "content-type", "from"]
    assert not verifies(received.replace(b"Hello  there", b"Hello there!"), records)


def test_mail_from_a_domain_without_a_key_is_sent_unsigned(stack: Stack) -> None:
    domain, _ = stack.domain(None)
    subject = f"unsigned {secrets.token_hex(4)}"
    submit(stack, message(domain, subject), f"u@{domain}", "friend@remote.example",
           login=f"u@{domain}")
    assert b"DKIM-Signature" not in stack.delivered(subject)


def test_an_anonymous_client_is_never_signed_whatever_its_from(stack: Stack) -> None:
    domain, _ = stack.domain("ed25519")
    reply = submit(stack, message(domain, "forged"), "forger@elsewhere.example", f"u@{domain}")
    raw = queued_raw(stack.receiver, reply)
    assert b"DKIM-Signature" not in raw and raw.startswith(b"Received: ")


def test_sendmail_signs_a_local_programs_mail(stack: Stack) -> None:
    domain, records = stack.domain("rsa")
    subject = f"cron {secrets.token_hex(4)}"
    done = subprocess.run([sys.executable, "-m", "tmail", "sendmail", "-t", "-f", f"u@{domain}"],
                          cwd=REPO, env=stack.api.env, input=message(domain, subject),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    received = stack.delivered(subject)
    assert verifies(received, records)
    assert b"Bcc" not in received
