"""The directory in the mail path, through a real gunicorn and real SMTP sessions: a change
made through the API counts at the next RCPT, aliases are expanded when the message is
queued (one record per target, with OrigRcpt), postmaster@ always has a home, and relaying
follows the relay networks and relay domains."""

from __future__ import annotations

import email
import secrets
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from pathlib import Path

import pytest

from tests.conftest import REPO, ApiServer, start_api, stop, wait_until
from tests.sink import Sink
from tests.smtp_helpers import Receiver, start_receiver
from tmail.queue import Record

POSTMASTER = "hostmaster@admins.example"
BODY = b"From: s@sender.example\r\nSubject: directory\r\n\r\nhello\r\n"


@dataclass
class Stack:
    api: ApiServer
    receiver: Receiver
    sink: Sink

    def post(self, path: str, body: dict) -> dict:  # type: ignore[type-arg]
        response = self.api.session.post(self.api.url(path), json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def domain(self, local: bool = True) -> str:
        name = f"d{secrets.token_hex(4)}.test"
        self.post(f"/domains/{name}", {"local": local})
        return name

    def user(self, login: str) -> None:
        self.post(f"/users/{login}", {"passwd": "password1", "haveMailbox": True})

    def records(self, uuid: str) -> list[Record]:
        return sorted((r for r in self.receiver.queue.iter_records() if r.uuid == uuid),
                      key=lambda r: r.id)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Its own data dir: relay networks and domains here must not change other tests."""
    data = tmp_path_factory.mktemp("directory")
    with Sink() as sink:
        api = start_api(data, TMAIL_POSTMASTER=POSTMASTER, TMAIL_ROUTES=sink.route)
        try:
            receiver = start_receiver(api.env, data / "receiver.log")
            try:
                yield Stack(api, receiver, sink)
            finally:
                stop(receiver.process)
        finally:
            stop(api.process)


def rcpt(stack: Stack, address: str, source: str = "127.0.0.1") -> bytes:
    with stack.receiver.raw(source) as client:
        client.command(b"EHLO client.test")
        assert client.command(b"MAIL FROM:<s@sender.example>").startswith(b"250")
        return client.command(b"RCPT TO:<" + address.encode() + b">")


def send(stack: Stack, rcpts: list[str], sender: str = "s@sender.example") -> str:
    with smtplib.SMTP("127.0.0.1", stack.receiver.port, local_hostname="client.test",
                      timeout=10) as client:
        client.ehlo()
        client.mail(sender)
        for address in rcpts:
            code, text = client.rcpt(address)
            assert code == 250, (address, text)
        code, text = client.data(BODY)
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


@pytest.mark.parametrize("local", [True, False])
def test_a_domain_created_through_the_api_counts_at_the_next_rcpt(stack: Stack,
                                                                  local: bool) -> None:
    name = f"d{secrets.token_hex(4)}.test"
    address = f"postmaster@{name}" if local else f"anyone@{name}"
    assert rcpt(stack, address).startswith(b"554 5.7.1")
    stack.post(f"/domains/{name}", {"local": local})
    assert rcpt(stack, address).startswith(b"250")
    assert stack.api.session.delete(stack.api.url(f"/domains/{name}")).ok
    assert rcpt(stack, address).startswith(b"554 5.7.1")


def test_a_relay_domain_is_queued_as_remote_mail(stack: Stack) -> None:
    name = stack.domain(local=False)
    [record] = stack.records(send(stack, [f"Anyone@{name}"]))
    assert (record.rcpt_to, record.host, record.orig_rcpt) == (f"Anyone@{name}", name,
                                                               f"Anyone@{name}")


def test_unknown_local_recipient_is_refused_with_5_1_1(stack: Stack) -> None:
    assert rcpt(stack, f"nobody@{stack.domain()}").startswith(b"550 5.1.1")


def run_runner(stack: Stack) -> None:
    done = subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO,
                          env=stack.api.env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def maildir_messages(stack: Stack, login: str) -> list[email.message.EmailMessage]:
    local, domain = login.split("@")
    new = stack.api.config.mailboxes_dir / domain[0] / domain / local[0] / local / "Maildir/new"
    return [email.message_from_bytes(path.read_bytes(), policy=policy.default)
            for path in sorted(new.glob("*"))] if new.is_dir() else []


def test_an_alias_to_two_local_users_and_a_remote_address_gives_three_records(
        stack: Stack) -> None:
    domain, other = stack.domain(), stack.domain()
    stack.user(f"u1@{domain}")
    stack.user(f"u2@{other}")
    remote = f"r{secrets.token_hex(3)}@remote.example"
    stack.post(f"/aliases/team@{domain}", {"deliverTo": [f"u1@{domain}", f"u2@{other}",
                                                          remote, f"U1@{domain}"]})
    records = stack.records(send(stack, [f"Team@{domain}"]))
    assert [(r.rcpt_to, r.orig_rcpt, r.mail_from) for r in records] == [
        (f"u1@{domain}", f"Team@{domain}", "s@sender.example"),
        (f"u2@{other}", f"Team@{domain}", "s@sender.example"),
        (remote, f"Team@{domain}", "s@sender.example")]
    listed = stack.api.session.get(stack.api.url(f"/queue/{records[0].id}")).json()
    assert listed["OrigRcpt"] == f"Team@{domain}"

    run_runner(stack)
    assert wait_until(lambda: any(remote in m.rcpt_tos for m in stack.sink.messages))
    for login in (f"u1@{domain}", f"u2@{other}"):
        [delivered] = maildir_messages(stack, login)
        assert delivered["Delivered-To"] == login and delivered["Subject"] == "directory"
    assert not stack.records(records[0].uuid)


def test_two_rcpts_reaching_the_same_target_give_one_record(stack: Stack) -> None:
    domain = stack.domain()
    stack.user(f"u@{domain}")
    stack.post(f"/aliases/a@{domain}", {"deliverTo": [f"u@{domain}"]})
    records = stack.records(send(stack, [f"a@{domain}", f"u@{domain}"]))
    assert [(r.rcpt_to, r.orig_rcpt) for r in records] == [(f"u@{domain}", f"a@{domain}")]


def test_a_domain_alias_keeps_the_local_part(stack: Stack) -> None:
    old, new = stack.domain(), stack.domain()
    stack.user(f"bob@{new}")
    stack.post(f"/aliases/@{old}", {"deliverTo": [f"@{new}"]})
    [record] = stack.records(send(stack, [f"Bob@{old}"]))
    assert (record.rcpt_to, record.orig_rcpt) == (f"Bob@{new}", f"Bob@{old}")
    assert rcpt(stack, f"nobody@{old}").startswith(b"550 5.1.1")


def test_an_alias_loop_is_refused_at_rcpt_with_5_4_6(stack: Stack) -> None:
    domain = stack.domain()
    stack.post(f"/aliases/ping@{domain}", {"deliverTo": [f"pong@{domain}"]})
    stack.post(f"/aliases/pong@{domain}", {"deliverTo": [f"ping@{domain}"]})
    assert rcpt(stack, f"ping@{domain}").startswith(b"550 5.4.6")


@pytest.mark.parametrize("spelling", ["postmaster", "PostMaster"])
def test_postmaster_goes_to_its_alias_else_to_tmail_postmaster(stack: Stack,
                                                               spelling: str) -> None:
    plain, aliased = stack.domain(), stack.domain()
    stack.user(f"boss@{aliased}")
    stack.post(f"/aliases/postmaster@{aliased}", {"deliverTo": [f"boss@{aliased}"]})
    [record] = stack.records(send(stack, [f"{spelling}@{plain}"]))
    assert (record.rcpt_to, record.orig_rcpt) == (POSTMASTER, f"{spelling}@{plain}")
    [record] = stack.records(send(stack, [f"{spelling}@{aliased}"]))
    assert (record.rcpt_to, record.orig_rcpt) == (f"boss@{aliased}", f"{spelling}@{aliased}")


def test_a_pipe_alias_and_a_mini_list(stack: Stack) -> None:
    domain = stack.domain()
    stack.user(f"member@{domain}")
    stack.post(f"/aliases/list@{domain}", {"deliverTo": [f"member@{domain}"],
                                           "pipe": "/usr/local/bin/archive --list x",
                                           "miniList": True})
    records = stack.records(send(stack, [f"list@{domain}"]))
    assert [(r.rcpt_to, r.mail_from, r.transport, r.pipe) for r in records] == [
        (f"list@{domain}", f"list@{domain}", "pipe", "/usr/local/bin/archive --list x"),
        (f"member@{domain}", f"list@{domain}", "", "")]
    shown = stack.api.session.get(stack.api.url(f"/queue/{records[0].id}")).json()
    assert (shown["Transport"], shown["Pipe"]) == ("pipe", "/usr/local/bin/archive --list x")


def test_a_relay_network_added_at_run_time_counts_at_the_next_rcpt(stack: Stack) -> None:
    remote = "someone@remote.example"
    assert rcpt(stack, remote, source="127.0.0.2").startswith(b"554 5.7.1")
    entry = stack.post("/relayips", {"network": "127.0.0.2"})
    assert rcpt(stack, remote, source="127.0.0.2").startswith(b"250")
    assert rcpt(stack, remote, source="127.0.0.1").startswith(b"554 5.7.1")
    assert stack.api.session.delete(stack.api.url(f"/relayips/{entry['Id']}")).ok
    assert rcpt(stack, remote, source="127.0.0.2").startswith(b"554 5.7.1")


def test_the_receiver_log_never_shows_a_route_password(stack: Stack, tmp_path: Path) -> None:
    secret = "s3cret-" + secrets.token_hex(6)
    stack.post("/routes", {"host": "never.example", "remoteHost": "127.0.0.1",
                           "remotePort": 2600, "authLogin": "x", "authPassword": secret})
    rcpt(stack, "someone@remote.example")
    logs = [stack.receiver.log, Path(stack.api.env["TMAIL_DATA_DIR"]).parent / "gunicorn.log"]
    assert all(secret not in path.read_text() for path in logs)
