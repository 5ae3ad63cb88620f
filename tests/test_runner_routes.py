"""Routes in the runner: choosing among them, fail-over, per-route STARTTLS and smart-host AUTH,
against real SMTP servers on loopback."""

from __future__ import annotations

import contextlib
import email
import logging
import random
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from queue_runner.delivery import Runner
from queue_runner.routing import NoSuchDomain, destination
from queue_runner.transports import SmtpTransport
from tests.conftest import free_port, start_api, stop, tmail_env
from tests.sink import Script, Sink, SinkHandler
from tmail import config as tmail_config
from tmail.config import Config
from tmail.db import DatabaseUnavailable
from tmail.queue import QueueStore, Record, Status, Target
from tmail.routes import Route, failover_order, matching
from tmail.tls import ensure_certificate

LOGIN, PASSWORD = "relay-user", "s3cret-Smart-Host-Pass"


def message(n: int | str = 1) -> bytes:
    return (f"From: s@sender.test\r\nMessage-ID: <r{n}@sender.test>\r\nSubject: {n}\r\n\r\n"
            "body\r\n").encode()


class NoDns:
    """Any MX look-up fails permanently: a test that gets a 5.1.2 went by MX, not a route."""

    def mx(self, domain: str) -> list[tuple[int, str]]:
        raise NoSuchDomain(domain)


class SmartHost(Sink):
    """A sink that offers STARTTLS with the tests' self-signed certificate and requires
    AUTH (PLAIN and LOGIN, over TLS only unless ``auth_require_tls`` is false)."""

    def __init__(self, cert: tuple[Path, Path] | None, **options: object) -> None:
        # Not Sink.__init__: its controller (and that one's event loop) would never close.
        self.handler = SinkHandler()
        self.port = free_port()
        self.logins: list[tuple[str, str, bool]] = []  # mechanism, login, over TLS
        tls = None
        if cert is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(*cert)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     tls_context=tls, auth_required=True,
                                     authenticator=self.authenticate, **options)

    def authenticate(self, server: object, session: object, envelope: object,
                     mechanism: str, auth_data: object) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode()
        with self.handler.lock:
            self.logins.append((mechanism, login, getattr(session, "ssl", None) is not None))
        ok = (login, auth_data.password.decode()) == (LOGIN, PASSWORD)
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return tmail_config.load(tmail_env(tmp_path, TMAIL_RETRY_MIN_BACKOFF="1",
                                       TMAIL_RETRY_MAX_BACKOFF="4", TMAIL_RUNNER_TIMEOUT="5"))


@pytest.fixture
def store(config: Config) -> QueueStore:
    return QueueStore(config.queue_dir)


@pytest.fixture
def cert(config: Config) -> tuple[Path, Path]:
    return ensure_certificate(config)


class Routes:
    """The routes in force: the test changes them between attempts, as the API would."""

    def __init__(self) -> None:
        self.current: list[Route] = []
        self.reads = 0

    def __call__(self) -> list[Route]:
        self.reads += 1
        return list(self.current)


@pytest.fixture
def routes() -> Routes:
    return Routes()


@pytest.fixture
def runner(config: Config, routes: Routes) -> Iterator[Runner]:
    built = Runner.build(config, smtp=SmtpTransport(config, NoDns(), routes=routes))
    yield built
    built.shutdown()


def to(port: int, host: str = "*", **fields: object) -> Route:
    return Route(host=host, remote_host="127.0.0.1", remote_port=port, **fields)  # type: ignore[arg-type]


def queue(store: QueueStore, rcpt: str = "r@remote.test", sender: str = "s@sender.test",
          n: int | str = 1, auth_user: str = "") -> Record:
    [record] = store.enqueue(message(n), sender, [rcpt], auth_user=auth_user)
    return record


def attempt(runner: Runner) -> None:
    """Deliver what is due, then QUIT the cached sessions: each test's servers stop when
    the test ends, before the runner fixture does."""
    runner.run_once()
    runner.smtp.close()


@contextlib.contextmanager
def greeting_server(greeting: bytes) -> Iterator[int]:
    """A server that greets every connection with ``greeting`` and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join()
        listener.close()


# --- choosing ----------------------------------------------------------------------------


@pytest.mark.parametrize(("domain", "sender", "auth_user", "chosen"), [
    ("remote.test", "s@sender.test", "", "host"),
    ("other.test", "s@sender.test", "", "wildcard"),
    ("remote.test", "VIP@Sender.test", "", "host+sender"),
    ("remote.test", "vip@sender.test", "bob@sender.test", "host+sender+user"),
    ("other.test", "vip@sender.test", "", "wildcard+sender"),
    ("remote.test", "s@sender.test", "bob@sender.test", "host"),  # no host+user route
])
def test_the_most_specific_route_wins(domain: str, sender: str, auth_user: str,
                                      chosen: str) -> None:
    table = {
        "wildcard": Route("*", "wildcard"),
        "wildcard+sender": Route("*", "wildcard+sender", mail_from="vip@sender.test"),
        "host": Route("remote.test", "host"),
        "host+sender": Route("remote.test", "host+sender", mail_from="vip@sender.test"),
        "host+sender+user": Route("remote.test", "host+sender+user",
                                  mail_from="vip@sender.test", auth_user="bob@sender.test"),
        "elsewhere": Route("elsewhere.test", "elsewhere"),
    }
    hops = destination(domain, list(table.values()), NoDns(), sender=sender,
                       auth_user=auth_user).hops
    assert [hop.route.remote_host for hop in hops if hop.route] == [chosen]


def test_no_matching_route_means_mx() -> None:
    class OneMx:
        def mx(self, domain: str) -> list[tuple[int, str]]:
            return [(10, f"mx.{domain}")]

    found = destination("remote.test", [Route("other.test", "smart"),
                                        Route("*", "vip-only", mail_from="vip@sender.test")],
                        OneMx(), sender="s@sender.test")
    assert not found.routed and [str(h) for h in found.hops] == ["mx.remote.test:25"]
    assert matching([Route("*", "smart", auth_user="bob@x.test")], "remote.test") == []


def test_priorities_order_fail_overs_and_equal_ones_share() -> None:
    routes = [Route("*", "backup", priority=20), Route("*", "a", priority=5),
              Route("*", "b", priority=5), Route("*", "last", priority=30)]
    orders = Counter(tuple(r.remote_host for r in failover_order(routes, random.Random(seed)))
                     for seed in range(40))
    assert set(orders) == {("a", "b", "backup", "last"), ("b", "a", "backup", "last")}


# --- fail-over -----------------------------------------------------------------------------


def test_priority_fail_over_from_a_dead_port_to_a_live_one(runner: Runner, routes: Routes,
                                                            store: QueueStore) -> None:
    with Sink() as live, greeting_server(b"421 4.3.2 busy, come back later\r\n") as busy:
        routes.current = [to(free_port(), priority=0), to(busy, priority=5),
                          to(live.port, priority=10)]
        record = queue(store)
        attempt(runner)
        assert store.get(record.id) is None and len(live.messages) == 1


def test_all_hops_failing_defers_with_the_last_ones_reason(runner: Runner, routes: Routes,
                                                            store: QueueStore) -> None:
    with greeting_server(b"554 5.3.2 no service here\r\n") as refusing:
        routes.current = [to(free_port(), priority=0), to(refusing, priority=1)]
        record = queue(store)
        attempt(runner)
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED  # a 5xx greeting skips the host, never bounces
    assert deferred.last_error == (f"451 4.4.0 host 127.0.0.1:{refusing} refused to talk to "
                                   "me: 554 5.3.2 no service here")


def test_a_working_primary_takes_everything_and_equal_routes_share_the_load(
    runner: Runner, routes: Routes, store: QueueStore
) -> None:
    with Sink() as a, Sink() as b, Sink() as backup:
        routes.current = [to(a.port, priority=1), to(b.port, priority=1),
                          to(backup.port, priority=2)]
        for n in range(20):
            queue(store, n=n)
        attempt(runner)
        assert len(a.messages) + len(b.messages) == 20
        assert a.messages and b.messages and backup.messages == []


def test_routes_by_sender_and_host_reach_their_own_servers(runner: Runner, routes: Routes,
                                                          store: QueueStore) -> None:
    with Sink() as smart, Sink() as host, Sink() as vip:
        routes.current = [to(smart.port), to(host.port, host="remote.test"),
                          to(vip.port, host="remote.test", mail_from="vip@sender.test")]
        queue(store, "r@remote.test", n=1)
        queue(store, "r@remote.test", sender="VIP@sender.test", n=2)
        queue(store, "r@other.test", sender="vip@sender.test", n=3)
        attempt(runner)
        assert [m.content.count(b"Subject: 1") for m in host.messages] == [1]
        assert [m.content.count(b"Subject: 2") for m in vip.messages] == [1]
        assert [m.content.count(b"Subject: 3") for m in smart.messages] == [1]


def test_a_route_change_applies_at_the_next_pass(runner: Runner, routes: Routes,
                                                 store: QueueStore) -> None:
    with Sink() as first, Sink() as second:
        routes.current = [to(first.port, host="remote.test")]
        queue(store, n=1)
        attempt(runner)
        routes.current = [to(second.port, host="remote.test")]
        queue(store, n=2)
        attempt(runner)
        assert [len(first.messages), len(second.messages)] == [1, 1]
        routes.current = []
        record = queue(store, n=3)
        attempt(runner)  # no route left: by MX, which does not know the domain here
        assert [len(first.messages), len(second.messages)] == [1, 1]
        assert store.get(record.id) is None


def test_routes_are_read_once_per_delivery_pass(runner: Runner, routes: Routes,
                                                store: QueueStore) -> None:
    with Sink() as sink:
        routes.current = [to(sink.port)]
        for n in range(10):
            queue(store, f"r{n}@remote{n}.test", n=n)  # ten messages, ten domains
        attempt(runner)
        assert (len(sink.messages), routes.reads) == (10, 1)
        queue(store, n=10)
        attempt(runner)
        assert (len(sink.messages), routes.reads) == (11, 2)


def test_routes_that_cannot_be_read_defer_instead_of_going_by_mx(config: Config,
                                                               store: QueueStore) -> None:
    def unavailable() -> list[Route]:
        raise DatabaseUnavailable("database is locked")

    runner = Runner.build(config, smtp=SmtpTransport(config, NoDns(), routes=unavailable))
    try:
        record = queue(store)
        attempt(runner)
    finally:
        runner.shutdown()
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED  # NoDns would have bounced it with 5.1.2
    assert deferred.last_error == "451 4.3.0 routes unavailable: database is locked"


# --- STARTTLS and AUTH ---------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_to_a_smart_host_that_requires_it(runner: Runner, routes: Routes,
                                               store: QueueStore, cert: tuple[Path, Path],
                                               mechanism: str) -> None:
    others = [m for m in ("PLAIN", "LOGIN") if m != mechanism]
    with SmartHost(cert, auth_exclude_mechanism=others) as smart:
        routes.current = [to(smart.port, auth_login=LOGIN, auth_password=PASSWORD)]
        record = queue(store)
        attempt(runner)
        assert store.get(record.id) is None and len(smart.messages) == 1
        assert smart.logins == [(mechanism, LOGIN, True)]


def test_a_wrong_password_defers_with_the_reply_and_never_shows_the_password(
    runner: Runner, routes: Routes, store: QueueStore, cert: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + PASSWORD
    with SmartHost(cert) as smart, caplog.at_level(logging.DEBUG):
        routes.current = [to(smart.port, auth_login=LOGIN, auth_password=wrong)]
        record = queue(store)
        attempt(runner)
        assert smart.messages == [] and len(smart.logins) == 1
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED and deferred.delivery_failed_count == 1
    assert deferred.last_error.startswith("454 4.7.8 SASL authentication failed; server "
                                          f"127.0.0.1:{smart.port} said: 535 5.7.8")
    queue_files = b"".join(p.read_bytes() for p in store.layout.root.rglob("*") if p.is_file())
    assert wrong.encode() not in queue_files and wrong not in caplog.text
    assert "535 5.7.8" in caplog.text  # the log line says why, without the secret


PLAINTEXT_AUTH_SERVER = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS")  # on purpose: what we must not trust


@PLAINTEXT_AUTH_SERVER
@pytest.mark.parametrize(("starttls", "plaintext_ok", "delivered"), [
    ("may", False, False), ("none", False, False), ("none", True, True)])
def test_credentials_go_without_tls_only_when_the_route_says_so(
    runner: Runner, routes: Routes, store: QueueStore, starttls: str, plaintext_ok: bool,
    delivered: bool
) -> None:
    with SmartHost(None, auth_require_tls=False) as plain:
        routes.current = [to(plain.port, auth_login=LOGIN, auth_password=PASSWORD,
                             starttls=starttls, allow_plaintext_auth=plaintext_ok)]
        record = queue(store)
        attempt(runner)
        assert (store.get(record.id) is None) == delivered
        assert len(plain.logins) == int(delivered)
    if not delivered:
        assert store.get(record.id).last_error == (
            f"451 4.7.0 will not send AUTH credentials to 127.0.0.1:{plain.port} without TLS")


@pytest.mark.parametrize(("starttls", "outcome"), [
    ("encrypt", "451 4.7.4 TLS is required, but was not offered by host"), ("may", "sent")])
def test_a_route_that_requires_tls_never_sends_in_clear(
    runner: Runner, routes: Routes, store: QueueStore, starttls: str, outcome: str
) -> None:
    with Sink() as plain:
        routes.current = [to(plain.port, starttls=starttls)]
        record = queue(store)
        attempt(runner)
        if outcome == "sent":
            assert store.get(record.id) is None and len(plain.messages) == 1
        else:
            assert store.get(record.id).last_error.startswith(outcome) and plain.messages == []


@PLAINTEXT_AUTH_SERVER
def test_starttls_none_keeps_the_session_in_clear(runner: Runner, routes: Routes,
                                                  store: QueueStore,
                                                  cert: tuple[Path, Path]) -> None:
    with SmartHost(cert, auth_require_tls=False) as smart:
        routes.current = [to(smart.port, auth_login=LOGIN, auth_password=PASSWORD,
                             starttls="none", allow_plaintext_auth=True)]
        queue(store)
        attempt(runner)
        assert smart.logins == [("PLAIN", LOGIN, False)] and len(smart.messages) == 1


# --- through the directory -------------------------------------------------------------------


def test_a_route_made_through_the_api_is_used_at_the_next_attempt(tmp_path: Path) -> None:
    """API -> database -> the same runner, not restarted: the stored route (its password
    included, for AUTH) beats TMAIL_ROUTES' "*" from the next attempt on, until deleted."""
    with Sink() as bootstrap_host:
        api = start_api(tmp_path, TMAIL_ROUTES=bootstrap_host.route)
        runner = Runner.build(tmail_config.load(api.env))
        try:
            with SmartHost(ensure_certificate(api.config)) as smart:
                queue(runner.store, n="before")
                attempt(runner)
                created = api.session.post(api.url("/routes"), json={
                    "host": "remote.test", "remoteHost": "127.0.0.1", "remotePort": smart.port,
                    "authLogin": LOGIN, "authPassword": PASSWORD})
                assert created.status_code == 201, created.text
                queue(runner.store, n="stored")
                attempt(runner)
                assert api.session.delete(api.url(f"/routes/{created.json()['Id']}")).ok
                queue(runner.store, n="after")
                attempt(runner)
                assert subjects(smart) == [b"stored"]
                assert smart.logins == [("PLAIN", LOGIN, True)]
            assert subjects(bootstrap_host) == [b"before", b"after"]
            assert list(runner.store.iter_ids()) == []
        finally:
            runner.shutdown()
            stop(api.process)


def subjects(sink: Sink) -> list[bytes]:
    return [m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages]


def test_a_bounced_alias_target_names_its_original_recipient(runner: Runner, routes: Routes,
                                                            store: QueueStore) -> None:
    with Sink() as sink:
        sink.handler.script = Script(rcpt={"member@remote.test": "550 5.1.1 no such user"})
        routes.current = [to(sink.port)]
        store.enqueue(message(), "s@sender.test",
                      [Target("member@remote.test", orig_rcpt="Team@Local.test")])
        attempt(runner)
    [dsn] = [email.message_from_bytes(store.read_raw(r.id), policy=policy.default)
             for r in store.iter_records(None)]
    status = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    block = status.get_payload()[1]
    assert block["Original-Recipient"] == "rfc822; Team@Local.test"
    assert block["Final-Recipient"] == "rfc822; member@remote.test"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
