"""``GET /metrics`` after a scripted run: receiver, runner and API counts add up across
processes, and the queue gauges describe what is left."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import QUEUE_FIGURES_TTL
from tests.conftest import REPO, ApiServer, start_api, stop, wait_until
from tests.sink import Script, Sink
from tests.test_smtp_receiver import start_receiver
from tmail.queue import QueueStore

LOCAL = "metrics.test"
BODY = b"From: s@sender.test\r\nSubject: metrics\r\n\r\nbody\r\n"


def samples(api: ApiServer, **request: object) -> dict[tuple[str, frozenset[tuple[str, str]]],
                                                       float]:
    response = api.session.get(api.url("/metrics"), timeout=30, **request)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("node") == api.config.node, sample  # every metric names its node
            found[(sample.name, frozenset(labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as server:
        server.handler.script = Script(rcpt={"bad@remote.test": "550 5.1.1 no such user"})
        yield server


@pytest.fixture
def api(tmp_path: Path, sink: Sink) -> Iterator[ApiServer]:
    server = start_api(tmp_path, TMAIL_ROUTES=sink.route, TMAIL_LOCAL_DOMAINS=LOCAL)
    yield server
    stop(server.process)


def test_metrics_count_what_every_process_did(api: ApiServer, sink: Sink,
                                              tmp_path: Path) -> None:
    assert api.session.post(api.url(f"/users/u@{LOCAL}"),
                            json={"passwd": "password1", "haveMailbox": True}).status_code == 201

    # The receiver: two messages accepted, one unknown user and one relay attempt refused.
    receiver = start_receiver(api.env, tmp_path / "receiver.log")
    try:
        with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as smtp:
            for _ in range(2):
                smtp.sendmail("s@sender.test", [f"u@{LOCAL}"], BODY)
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                smtp.sendmail("s@sender.test", [f"nobody@{LOCAL}"], BODY)
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                smtp.sendmail("s@sender.test", ["someone@remote.test"], BODY)
    finally:
        stop(receiver.process)

    # The runner (cron style): two local deliveries, one remote sent, one remote bounced
    # (a failed DSN to the sender), and one record held by the admin stays queued.
    store = QueueStore(api.config.queue_dir)
    store.enqueue(BODY, "s@sender.test", ["ok@remote.test"])
    store.enqueue(BODY, "s@sender.test", ["bad@remote.test"])
    [held] = store.enqueue(BODY, "s@sender.test", ["held@other.test"])
    assert api.session.post(api.url(f"/queue/hold/{held.id}")).status_code == 200
    subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO, env=api.env,
                   check=True, timeout=60, capture_output=True)

    for _ in range(3):
        assert api.session.get(api.url("/queue/999999")).status_code == 404

    def counted() -> bool:
        found = samples(api)
        return value(found, "tmail_api_requests_total", route="/queue/<int:record_id>",
                     method="GET", status="404") == 3
    assert wait_until(counted, 10, 0.2)  # the other worker saves its counts within a second

    found = samples(api)
    assert value(found, "tmail_smtp_messages_total", result="accepted", reason="") == 2
    assert value(found, "tmail_smtp_messages_total", result="refused",
                 reason="unknown_user") == 1
    assert value(found, "tmail_smtp_messages_total", result="refused",
                 reason="relay_denied") == 1
    assert value(found, "tmail_deliveries_total", result="sent", transport="local") == 2
    assert value(found, "tmail_deliveries_total", result="sent", transport="smtp") >= 1
    assert value(found, "tmail_deliveries_total", result="bounced", transport="smtp") == 1
    assert value(found, "tmail_dsns_total", action="failed") == 1
    assert value(found, "tmail_api_requests_total", route="/users/<login:login>",
                 method="POST", status="201") == 1
    assert value(found, "tmail_queue_records", status="held") == 1
    assert value(found, "tmail_queue_records_by_domain", domain="other.test") == 1
    assert value(found, "tmail_queue_oldest_age_seconds") > 0
    assert [m.rcpt_tos for m in sink.messages if m.rcpt_tos != ["s@sender.test"]] == [
        ["ok@remote.test"]]


def test_metrics_need_credentials_unless_public(api: ApiServer, tmp_path: Path) -> None:
    anonymous = requests.Session()
    anonymous.trust_env = False
    anonymous.verify = api.session.verify
    response = anonymous.get(api.url("/metrics"), timeout=10)
    assert response.status_code == 401
    assert response.json()["msg"] == "authentication required"

    (tmp_path / "public").mkdir()
    public = start_api(tmp_path / "public", TMAIL_METRICS_PUBLIC="true")
    try:
        anonymous.verify = public.session.verify
        assert anonymous.get(public.url("/metrics"), timeout=10).status_code == 200
        assert anonymous.get(public.url("/queue"), timeout=10).status_code == 401
    finally:
        stop(public.process)


@pytest.mark.parametrize("record", [
    b'{"Id": 1, "AddedAt": "not a time", "Host": "x.test", "Status": 2}',
    b'{"Id": 1, "Host": ["not", "a", "host"], "Status": 2}',
    b'{"Id": 1, "AddedAt": "", "Host": "x.test", "Status": "two"}',
    b'{"Id": 1}',
    b"\xff not JSON",
])
def test_a_record_that_does_not_parse_never_makes_metrics_fail(
        api: ApiServer, record: bytes) -> None:
    store = QueueStore(api.config.queue_dir)
    [first] = store.enqueue(BODY, "s@sender.test", ["one@remote.test"])
    store.enqueue(BODY, "s@sender.test", ["two@remote.test"])
    store.layout.record_json(first.id).write_bytes(record)
    found = samples(api)
    assert value(found, "tmail_queue_records", status="scheduled") >= 1
    assert api.session.get(api.url("/queue/summary")).status_code == 200


def test_queue_figures_are_cached_between_close_scrapes(api: ApiServer) -> None:
    """A scraper every second must not make every worker walk the whole queue each time."""
    store = QueueStore(api.config.queue_dir)
    store.enqueue(BODY, "s@sender.test", ["one@remote.test"])
    scheduled = [value(samples(api), "tmail_queue_records", status="scheduled")
                 for _ in range(4)]  # both workers have scraped once, most likely
    store.enqueue(BODY, "s@sender.test", ["two@remote.test"])
    assert value(samples(api), "tmail_queue_records", status="scheduled") == scheduled[-1] == 1
    assert wait_until(lambda: value(samples(api), "tmail_queue_records",
                                    status="scheduled") == 2, timeout=QUEUE_FIGURES_TTL * 4)
