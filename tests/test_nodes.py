"""Several tmail nodes: each names itself (``TMAIL_NODE``), and what it queues and counts
says which node it was; two whole nodes share one PostgreSQL (users are global, queues are
per node), and an outage of that database is temporary for every client of every node."""

from __future__ import annotations

import secrets
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import ApiServer, free_port, start_api, stop, tmail_env, wait_until
from tests.postgres import PostgresServer
from tests.smtp_helpers import Receiver, start_receiver
from tests.test_metrics import samples, value
from tests.test_runner import start_runner
from tmail import config as tmail_config
from tmail.config import ConfigError
from tmail.queue import QueueStore, Status
from tmail.queue.record import Record, RecordError

BODY = b"From: s@sender.test\r\nSubject: node\r\n\r\nbody\r\n"


# --- TMAIL_NODE ----------------------------------------------------------------------------


def test_node_defaults_to_the_host_name(tmp_path: Path) -> None:
    assert tmail_config.load(tmail_env(tmp_path)).node == socket.gethostname()


@pytest.mark.parametrize("name", ["mx1", "mx-2.paris", "MX_3", "a", "n" * 63])
def test_node_takes_a_short_token(tmp_path: Path, name: str) -> None:
    assert tmail_config.load(tmail_env(tmp_path, TMAIL_NODE=name)).node == name


@pytest.mark.parametrize("name", ["", "mx 1", "mx/1", "..", ".mx", "-mx", "mx\n", "n" * 64,
                                  "mx\"1", "mx{1}", "nœud"])
def test_node_refuses_what_is_not_safe_in_a_file_name_or_a_label(
        tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"^TMAIL_NODE="):
        tmail_config.load(tmail_env(tmp_path, TMAIL_NODE=name))


# --- Node in the queue -------------------------------------------------------------------


def test_every_record_of_a_message_carries_the_node_that_queued_it(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue", node="mx-a")
    records = store.enqueue(BODY, "s@sender.test", ["one@remote.test", "two@remote.test"])
    assert [record.node for record in records] == ["mx-a", "mx-a"]
    assert [store.get(record.id).node for record in records] == ["mx-a", "mx-a"]
    assert b'"Node": "mx-a"' in store.layout.record_json(records[0].id).read_bytes()


def test_a_store_without_a_node_names_the_host(tmp_path: Path) -> None:
    [record] = QueueStore(tmp_path / "queue").enqueue(BODY, "s@sender.test", ["r@remote.test"])
    assert record.node == socket.gethostname()


def test_records_written_before_nodes_still_read(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue", node="mx-a")
    [record] = store.enqueue(BODY, "s@sender.test", ["r@remote.test"])
    path = store.layout.record_json(record.id)
    old = path.read_bytes().replace(b', "Node": "mx-a"', b"")
    assert b"Node" not in old
    path.write_bytes(old)
    loaded = store.get(record.id)
    assert loaded is not None and loaded.node == ""
    assert loaded.to_json()["Node"] == ""


def test_a_node_that_is_not_text_is_not_a_record() -> None:
    record = Record.from_bytes(
        b'{"Id": 1, "Uuid": "u", "Key": "k", "MailFrom": "", "RcptTo": "r@x.test",'
        b' "Host": "x.test", "AddedAt": "", "NextDeliveryScheduledAt": "", "Status": 2,'
        b' "Node": "mx-a"}')
    assert record.node == "mx-a"
    with pytest.raises(RecordError, match="Node"):
        Record.from_bytes(record.to_bytes().replace(b'"Node": "mx-a"', b'"Node": 7'))


def test_the_api_shows_each_record_s_node_and_counts_under_its_own(tmp_path: Path) -> None:
    """The receiver queues under its node name; the API (same node) shows it in
    ``GET /queue`` and labels every metric with it."""
    api = start_api(tmp_path, TMAIL_NODE="mx-a", TMAIL_RELAY_NETWORKS="127.0.0.0/8")
    try:
        receiver = start_receiver(api.env, tmp_path / "receiver.log")
        try:
            with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as smtp:
                smtp.sendmail("s@sender.test", ["r@remote.test"], BODY)
        finally:
            stop(receiver.process)
        [shown] = api.session.get(api.url("/queue")).json()
        assert shown["Node"] == "mx-a"
        found = samples(api)  # which checks that every sample has node="mx-a"
        assert value(found, "tmail_smtp_messages_total", result="accepted", reason="") == 1
        assert value(found, "tmail_queue_records", status="scheduled") == 1
    finally:
        stop(api.process)


# --- two nodes on one PostgreSQL -----------------------------------------------------------

DOMAIN = "nodes.test"
PASSWORD = "first password"


@dataclass
class Node:
    name: str
    api: ApiServer
    receiver: Receiver
    runner: subprocess.Popen[bytes]
    runner_log: Path

    def create(self, login: str, password: str = PASSWORD) -> requests.Response:
        return self.api.session.post(self.api.url(f"/users/{login}"), json={
            "passwd": password, "authRelay": True, "haveMailbox": True})

    def smtp_auth(self, login: str, password: str) -> tuple[int, bytes]:
        """AUTH PLAIN after STARTTLS (with this node's own certificate): the reply."""
        with self.receiver.smtp() as client:
            client.starttls(context=self.receiver.tls())
            client.ehlo()
            try:
                return client.login(login, password)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error

    def logs(self) -> list[Path]:
        return [self.runner_log, self.receiver.log,
                Path(self.api.env["TMAIL_DATA_DIR"]).parent / "gunicorn.log"]

    def queue(self) -> list[dict[str, object]]:
        response = self.api.session.get(self.api.url("/queue"))
        assert response.status_code == 200, response.text
        return response.json()


@dataclass
class Cluster:
    nodes: tuple[Node, Node]
    postgres: PostgresServer
    mailboxes: Path


@pytest.fixture(scope="module")
def cluster(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    """Two whole tmail stacks (API over HTTPS, receiver, daemon runner), each with its own
    data dir, sharing one PostgreSQL database and one mailboxes tree (the shared storage of
    the README's topology). Remote mail goes to a port nobody listens on, so that it stays
    in the queue of the node that accepted it; deferred mail is retried within seconds."""
    database = postgres.url(postgres.create_database())
    mailboxes = tmp_path_factory.mktemp("shared-mailboxes")
    dead_end = free_port()
    with ExitStack() as cleanup:
        nodes = []
        for name in ("mx-a", "mx-b"):
            data = tmp_path_factory.mktemp(name)
            api = start_api(data, TMAIL_NODE=name, TMAIL_HOSTNAME=f"{name}.{DOMAIN}",
                            TMAIL_DATABASE_URL=database,
                            TMAIL_MAILBOXES_DIR=str(mailboxes), TMAIL_LOCAL_DOMAINS=DOMAIN,
                            TMAIL_ROUTES=f"*=127.0.0.1:{dead_end}",
                            TMAIL_RETRY_MIN_BACKOFF="1", TMAIL_RETRY_MAX_BACKOFF="2",
                            TMAIL_RUNNER_PROCESSES="1")
            cleanup.callback(stop, api.process)
            receiver = start_receiver(api.env, data / "receiver.log")
            cleanup.callback(stop, receiver.process)
            runner = start_runner(api.env, data / "runner.log")
            cleanup.callback(stop, runner)
            assert wait_until(lambda data=data: "watching" in (data / "runner.log").read_text(),
                              timeout=60), (data / "runner.log").read_text()
            nodes.append(Node(name, api, receiver, runner, data / "runner.log"))
        yield Cluster((nodes[0], nodes[1]), postgres, mailboxes)


def new_login(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(4)}@{DOMAIN}"


def maildir_files(user: dict[str, object]) -> list[Path]:
    new = Path(str(user["Home"])) / "Maildir" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_user_created_on_one_node_authenticates_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.nodes
    login = new_login()
    assert a.create(login).status_code == 201
    assert b.smtp_auth(login, PASSWORD)[0] == 235
    assert b.smtp_auth(login, "not the password")[0] == 535
    assert b.api.session.get(b.api.url(f"/users/{login}")).json()["Login"] == login


def test_mail_accepted_by_one_node_is_delivered_into_the_maildir(cluster: Cluster) -> None:
    a, b = cluster.nodes
    login = new_login()
    response = a.create(login)
    assert response.status_code == 201
    user = response.json()
    with b.receiver.smtp() as client:
        client.sendmail("s@sender.test", [login], BODY)
    assert wait_until(lambda: len(maildir_files(user)) == 1, timeout=60), (
        b.runner_log.read_text()[-3000:])
    [delivered] = maildir_files(user)
    assert delivered.read_bytes().endswith(BODY.replace(b"\r\n", b"\n"))
    assert f"by mx-b.{DOMAIN} (tmail)".encode() in delivered.read_bytes()  # B accepted it


def test_password_changed_on_one_node_works_on_the_other_at_once(cluster: Cluster) -> None:
    a, b = cluster.nodes
    login = new_login()
    assert a.create(login).status_code == 201
    assert a.smtp_auth(login, PASSWORD)[0] == 235  # A has looked the user up once
    response = b.api.session.put(b.api.url(f"/users/{login}"), json={"passwd": "second one"})
    assert response.status_code == 204
    assert a.smtp_auth(login, "second one")[0] == 235
    assert a.smtp_auth(login, PASSWORD)[0] == 535
    assert b.api.session.delete(b.api.url(f"/users/{login}")).status_code == 200
    assert a.smtp_auth(login, "second one")[0] == 535


def test_the_same_login_created_on_both_nodes_at_once_is_created_once(
        cluster: Cluster) -> None:
    """Each round starts both POSTs together; the database's unique index decides, and the
    loser gets the seed's answer for a login that exists (as when created twice on one)."""
    a, b = cluster.nodes
    for _ in range(5):
        login = new_login("race")
        barrier = threading.Barrier(2)

        def create(node: Node, login: str = login,
                   barrier: threading.Barrier = barrier) -> requests.Response:
            barrier.wait(timeout=30)
            return node.create(login)

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(create, (a, b)))
        assert sorted(r.status_code for r in responses) == [201, 422], [
            r.text for r in responses]
        [refused] = [r for r in responses if r.status_code == 422]
        assert refused.json()["msg"] == "unable to create new user"
        assert refused.json() == a.create(login).json()  # the same answer as sequentially
        listed = [u for u in a.api.session.get(a.api.url("/users")).json()
                  if u["Login"] == login]
        assert len(listed) == 1


def test_each_node_s_queue_shows_its_own_records_with_its_node(cluster: Cluster) -> None:
    a, b = cluster.nodes
    sender = new_login("relay")
    assert a.create(sender).status_code == 201
    queued: dict[str, set[str]] = {}
    for node in (a, b):
        rcpt = f"{node.name}-{secrets.token_hex(3)}@remote.test"
        with node.receiver.smtp() as client:
            client.starttls(context=node.receiver.tls())
            client.login(sender, PASSWORD)
            client.sendmail(sender, [rcpt], BODY)
        queued[node.name] = {rcpt}
    for node in (a, b):
        records = [r for r in node.queue() if r["AuthUser"] == sender]
        assert {r["RcptTo"] for r in records} == queued[node.name]
        assert {r["Node"] for r in records} == {node.name}
        [record] = records
        shown = node.api.session.get(node.api.url(f"/queue/{record['Id']}")).json()
        assert shown["Node"] == node.name


@dataclass
class Traffic:
    """What one node answered to a client that keeps sending mail to a local user and
    reading that user through the API, while the database goes away and comes back."""

    node: Node
    login: str
    smtp: list[int] = field(default_factory=list)  # RCPT/DATA outcome: 250, or the refusal
    api: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def mark(self) -> tuple[int, int]:
        return len(self.smtp), len(self.api)

    def answered_since(self, mark: tuple[int, int], smtp: int, api: int) -> bool:
        """Both kinds of client got these answers after ``mark``."""
        return smtp in self.smtp[mark[0]:] and api in self.api[mark[1]:]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.node.receiver.smtp() as client:
                    client.sendmail("outage@sender.test", [self.login], BODY)
                self.smtp.append(250)
            except smtplib.SMTPRecipientsRefused as exc:
                [(code, text)] = exc.recipients.values()
                self.smtp.append(code)
                if code != 451 or not text.startswith(b"4.3.0"):
                    self.errors.append(f"RCPT: {code} {text!r}")
            except (smtplib.SMTPException, OSError) as exc:
                self.errors.append(f"SMTP: {exc!r}")
            try:
                response = self.node.api.session.get(self.node.api.url(f"/users/{self.login}"))
            except requests.RequestException as exc:
                self.errors.append(f"API: {exc!r}")
            else:
                status = response.status_code
                self.api.append(status)
                if status not in (200, 503) or (
                        status == 503 and set(response.json()) != {"msg", "raw"}):
                    self.errors.append(f"API: {status} {response.text}")
            self.stop.wait(0.2)  # a client's pace, not a synchronisation


def test_database_outage_is_temporary_everywhere_and_loses_no_mail(cluster: Cluster) -> None:
    """PostgreSQL stopped in the middle of a run, then started again (tmail is not restarted):
    while it is down the API answers 503 and the receivers 451 4.3.0 (RCPT and AUTH), mail
    already queued waits, and afterwards everything works and every accepted message is in
    the Maildir, once."""
    a, b = cluster.nodes
    login = new_login("outage")
    user = a.create(login).json()
    traffic = [Traffic(node, login) for node in (a, b)]
    threads = [threading.Thread(target=t.run, daemon=True) for t in traffic]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: all(t.smtp.count(250) >= 2 for t in traffic), timeout=60)
        cluster.postgres.stop()
        try:
            marks = [t.mark() for t in traffic]
            assert wait_until(lambda: all(t.answered_since(mark, 451, 503)
                                          for t, mark in zip(traffic, marks, strict=True)),
                              timeout=60)
            for node in (a, b):
                code, text = node.smtp_auth(login, PASSWORD)
                assert (code, text[:5]) == (451, b"4.3.0"), text
                created = node.create(new_login())
                assert created.status_code == 503, created.text
                assert set(created.json()) == {"msg", "raw"}
                assert node.api.session.get(node.api.url("/queue")).status_code == 200
            # Mail queued while the database is down (sendmail, a DSN): the runner cannot
            # look the user up, so it waits; it must neither bounce nor drop it.
            waiting = []
            for node in (a, b):
                store = QueueStore(node.api.config.queue_dir, node=node.name)
                [record] = store.enqueue(BODY, "outage@sender.test", [login])
                waiting.append((store, record.id))
            assert wait_until(lambda: all(
                (found := store.get(record_id)) is not None and found.delivery_failed_count
                for store, record_id in waiting), timeout=60), [
                    node.runner_log.read_text()[-3000:] for node in (a, b)]
            for store, record_id in waiting:
                deferred = store.get(record_id)
                assert deferred is not None and deferred.status == Status.SCHEDULED
                assert deferred.last_error.startswith("451 4.3.0 database"), deferred
        finally:
            cluster.postgres.start()
        marks = [t.mark() for t in traffic]
        assert wait_until(lambda: all(t.answered_since(mark, 250, 200)
                                      for t, mark in zip(traffic, marks, strict=True)),
                          timeout=60)
    finally:
        for t in traffic:
            t.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert [t.errors for t in traffic] == [[], []]
    assert {code for t in traffic for code in t.smtp} == {250, 451}
    assert {code for t in traffic for code in t.api} == {200, 503}
    accepted = sum(t.smtp.count(250) for t in traffic) + 2  # and the two queued directly
    assert wait_until(lambda: len(maildir_files(user)) == accepted, timeout=90), (
        len(maildir_files(user)), accepted)
    for node in (a, b):
        assert node.smtp_auth(login, PASSWORD)[0] == 235
        assert not [r for r in node.queue() if r["RcptTo"] in (login, "outage@sender.test")]
        for log in node.logs():  # warnings that say what happened, never a traceback
            assert "Traceback" not in log.read_text(errors="replace"), log
