"""The queue through the HTTP API (real gunicorn) and the ops CLI, over one queue tree."""

from __future__ import annotations

import email
import json
import subprocess
import sys
import threading
import time
from email import policy
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, ApiServer, api_session, start_api, stop
from tmail.queue import QueueStore, Status

RAW = b"From: alice@example.org\r\nMessage-ID: <q1@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"
JSON = "application/json; charset=UTF-8"


@pytest.fixture
def store(api: ApiServer) -> QueueStore:
    return QueueStore(api.config.queue_dir)


def test_enqueued_records_show_in_get_queue_sorted_with_a_shared_uuid(
    api: ApiServer, store: QueueStore
) -> None:
    records = store.enqueue(RAW, "alice@example.org", ["a@x.org", "b@y.org", "c@y.org"],
                            auth_user="alice@example.org")
    response = api.session.get(api.url("/queue"))
    assert response.status_code == 200 and response.headers["Content-Type"] == JSON
    listed = [r for r in response.json() if r["Uuid"] == records[0].uuid]
    assert [r["Id"] for r in listed] == [r.id for r in records]
    assert listed[0]["MessageId"] == "q1@example.org" and listed[0]["Status"] == 2
    ids = [r["Id"] for r in response.json()]
    assert ids == sorted(ids)

    one = api.session.get(api.url(f"/queue/{records[1].id}")).json()
    assert one == records[1].to_json()


@pytest.mark.parametrize(
    ("query", "expected"),
    [("host=y.org", 2), ("rcpt=A@X.ORG", 1), ("from=alice@example.org&limit=1", 1),
     ("from=%3C%3E", 0), ("status=4", 0)],
)
def test_listing_filters(api: ApiServer, store: QueueStore, query: str, expected: int) -> None:
    first = store.enqueue(RAW, "alice@example.org", ["a@x.org", "b@y.org", "c@y.org"])[0]
    uuid = first.uuid
    listed = api.session.get(api.url(f"/queue?{query}&after={first.id - 1}")).json()
    assert len([r for r in listed if r["Uuid"] == uuid]) == expected


@pytest.mark.parametrize("query", ["bogus=1", "status=9", "limit=0", "after=-1", "status=x"])
def test_bad_listing_parameters_get_400(api: ApiServer, query: str) -> None:
    response = api.session.get(api.url(f"/queue?{query}"))
    assert response.status_code == 400 and set(response.json()) == {"msg", "raw"}


@pytest.mark.parametrize("path", ["/queue/999999", "/queue/abc", "/queue/-1", "/queue/1.5"])
def test_unknown_or_malformed_ids_get_404_json(api: ApiServer, path: str) -> None:
    response = api.session.get(api.url(path))
    assert response.status_code == 404 and response.headers["Content-Type"] == JSON
    assert set(response.json()) == {"msg", "raw"}


def test_discard_removes_the_record_and_its_raw_file(api: ApiServer, store: QueueStore) -> None:
    [record] = store.enqueue(RAW, "alice@example.org", ["a@x.org"])
    response = api.session.delete(api.url(f"/queue/discard/{record.id}"))
    assert response.status_code == 200
    assert api.session.get(api.url(f"/queue/{record.id}")).status_code == 404
    assert not store.layout.message_raw(record.uuid).exists()


def test_bounce_queues_a_dsn_to_the_sender(api: ApiServer, store: QueueStore) -> None:
    [record] = store.enqueue(RAW, "alice@example.org", ["a@x.org"])
    assert api.session.delete(api.url(f"/queue/bounce/{record.id}")).status_code == 200
    assert store.get(record.id) is None
    [dsn] = [r for r in store.iter_records() if r.rcpt_to == "alice@example.org"
             and r.mail_from == "" and r.id > record.id]
    message = email.message_from_bytes(store.read_raw(dsn.id), policy=policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    status = next(p for p in message.walk() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    assert blocks[1]["Action"] == "failed" and blocks[1]["Final-Recipient"].endswith("a@x.org")
    api.session.delete(api.url(f"/queue/discard/{dsn.id}"))


def test_null_sender_is_never_bounced(api: ApiServer, store: QueueStore) -> None:
    [record] = store.enqueue(RAW, "", ["a@x.org"])
    before = list(store.iter_ids())
    assert api.session.delete(api.url(f"/queue/bounce/{record.id}")).status_code == 200
    assert list(store.iter_ids()) == [i for i in before if i != record.id]


@pytest.mark.parametrize(("path", "mark"), [("discard", Status.DISCARD),
                                            ("bounce", Status.BOUNCE)])
def test_discard_or_bounce_during_delivery_marks_the_record(
    api: ApiServer, store: QueueStore, path: str, mark: Status
) -> None:
    [record] = store.enqueue(RAW, "alice@example.org", ["a@x.org"])
    with store.claimed(record.id) as fd:  # a runner's delivery attempt in progress
        assert fd is not None
        response = api.session.delete(api.url(f"/queue/{path}/{record.id}"))
        assert response.status_code == 200
        assert api.session.get(api.url(f"/queue/{record.id}")).json()["Status"] == mark
    with store.locked(record.id) as locked:
        locked.remove()


def test_hold_release_retry_and_raw_view(api: ApiServer, store: QueueStore) -> None:
    [record] = store.enqueue(RAW, "alice@example.org", ["a@x.org"])
    url = api.url
    held = api.session.post(url(f"/queue/hold/{record.id}"))
    assert held.status_code == 200 and held.json()["Status"] == Status.HELD
    assert api.session.post(url(f"/queue/retry/{record.id}")).status_code == 409
    assert api.session.post(url(f"/queue/release/{record.id}")).json()["Status"] == 2
    assert api.session.post(url(f"/queue/release/{record.id}")).status_code == 409
    assert api.session.post(url(f"/queue/retry/{record.id}")).status_code == 200
    raw = api.session.get(url(f"/queue/{record.id}/raw"))
    assert raw.headers["Content-Type"].startswith("message/rfc822") and raw.content == RAW
    headers = api.session.get(url(f"/queue/{record.id}/raw?headers=1")).content
    assert headers.endswith(b"Subject: hi\r\n") and b"body" not in headers
    assert api.session.post(url("/queue/hold/999999")).status_code == 404


def test_bulk_needs_a_filter_and_counts(api: ApiServer, store: QueueStore) -> None:
    host = "bulk.example"
    store.enqueue(RAW, "alice@example.org", [f"u{n}@{host}" for n in range(30)])
    assert api.session.post(api.url("/queue/hold")).status_code == 400
    result = api.session.post(api.url(f"/queue/hold?host={host}")).json()
    assert result == {"matched": 30, "done": 30, "skipped": 0}
    again = api.session.post(api.url(f"/queue/hold?host={host}")).json()
    assert again == {"matched": 30, "done": 0, "skipped": 30}
    gone = api.session.delete(api.url(f"/queue/discard?host={host}&status=4")).json()
    assert gone["done"] == 30
    assert api.session.get(api.url(f"/queue?host={host}")).json() == []


def run_cli(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmail", *args], cwd=REPO, env=api.env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_lists_shows_cats_and_changes_records(api: ApiServer, store: QueueStore) -> None:
    [record] = store.enqueue(RAW, "alice@example.org", ["cli@x.org"])
    listed = run_cli(api, "queue", "list", "--json", "--rcpt", "cli@x.org")
    assert [json.loads(line)["Id"] for line in listed.stdout.splitlines()] == [record.id]
    assert "cli@x.org" in run_cli(api, "queue", "list").stdout
    assert run_cli(api, "queue", "cat", str(record.id)).stdout.encode() == RAW.replace(
        b"\r\n", b"\n")
    assert json.loads(run_cli(api, "queue", "show", "--json", str(record.id)).stdout)["Id"] == (
        record.id)
    assert run_cli(api, "queue", "hold", "--host", "x.org").returncode == 0
    assert store.get(record.id).status == Status.HELD
    assert run_cli(api, "queue", "discard").returncode == 2  # no id, no filter
    assert run_cli(api, "queue", "discard", str(record.id)).returncode == 0
    assert run_cli(api, "queue", "show", str(record.id)).returncode == 1


def test_corrupt_record_is_quarantined_while_the_rest_is_listed(
    api: ApiServer, store: QueueStore
) -> None:
    records = store.enqueue(RAW, "alice@example.org", ["q1@x.org", "q2@x.org"])
    store.layout.record_json(records[0].id).write_text("{not json")
    response = api.session.get(api.url("/queue"))
    assert response.status_code == 200
    ids = [r["Id"] for r in response.json()]
    assert records[1].id in ids and records[0].id not in ids
    assert str(records[0].id) in run_cli(api, "queue", "quarantine").stdout


def test_summary_counts_by_domain_and_age_bucket(api: ApiServer, store: QueueStore) -> None:
    from datetime import timedelta

    from tmail.queue.record import now

    ages_minutes = {"a.summary": [1, 7, 7], "b.summary": [30, 2000]}
    for host, ages in ages_minutes.items():
        for age in ages:
            [record] = store.enqueue(RAW, "alice@example.org", [f"u@{host}"])
            with store.locked(record.id) as locked:
                locked.write(locked.record.evolve(added_at=now() - timedelta(minutes=age)))
    summary = api.session.get(api.url("/queue/summary")).json()
    assert summary["buckets"][0] == "0-5" and summary["buckets"][-1] == "1280+"
    domains = {d["host"]: d for d in summary["domains"]}
    assert domains["a.summary"]["buckets"][:2] == [1, 2] and domains["a.summary"]["count"] == 3
    assert domains["b.summary"]["buckets"][3] == 1 and domains["b.summary"]["buckets"][9] == 1
    assert summary["oldest_age_seconds"] >= 2000 * 60
    hosts = [d["host"] for d in summary["domains"]]
    assert hosts.index("a.summary") < hosts.index("b.summary")  # biggest first
    assert sum(summary["status"].values()) == summary["total"]["count"]
    table = run_cli(api, "queue", "summary").stdout
    assert "a.summary" in table and "1280+" in table and "TOTAL" in table
    api.session.delete(api.url("/queue/discard?from=alice@example.org"))


def test_bulk_over_a_thousand_records(api: ApiServer, store: QueueStore) -> None:
    from tmail.queue import Envelope

    host = "thousand.example"
    store.enqueue_many([Envelope(RAW, "bulk@example.org", [f"u{m}-{n}@{host}" for n in range(100)])
                        for m in range(11)])
    held = api.session.post(api.url(f"/queue/hold?host={host}")).json()
    assert held == {"matched": 1100, "done": 1100, "skipped": 0}
    gone = api.session.delete(api.url(f"/queue/discard?host={host}")).json()
    assert gone["done"] == 1100 and api.session.get(api.url(f"/queue?host={host}")).json() == []


KEEPALIVE = 1  # seconds: a short keep-alive timeout, so that the boundary comes quickly


def test_a_connection_reused_at_the_keepalive_boundary_always_gets_its_answer(
    tmp_path: Path,
) -> None:
    """gunicorn closes a connection idle for its keep-alive timeout at the first wake-up of
    its event loop after that; a request that arrives meanwhile is lost, and the client reads
    EOF (over TLS: "EOF occurred in violation of protocol", or "Remote end closed connection
    without response"). Reuse connections right at that instant, many times."""
    server = start_api(tmp_path, GUNICORN_CMD_ARGS=f"--keep-alive {KEEPALIVE}")
    try:
        [record] = QueueStore(server.config.queue_dir).enqueue(RAW, "a@example.org",
                                                               ["b@x.org"])
        url = server.url(f"/queue/{record.id}")
        answered: list[int] = []
        dropped: list[str] = []

        def reuse(idle: float) -> None:
            session = api_session(server.cert)
            answered.append(session.get(url, timeout=30).status_code)
            time.sleep(idle)  # the pool keeps the connection; it is reused now
            try:
                answered.append(session.get(url, timeout=30).status_code)
            except requests.ConnectionError as exc:
                dropped.append(f"idle {idle:.3f} s: {exc}")

        for _ in range(8):
            threads = [threading.Thread(target=reuse, args=(KEEPALIVE - 0.01 + 0.002 * n,))
                       for n in range(30)]
            for thread in threads:
                thread.start()
                time.sleep(0.007)  # spread the reuses over the server's loop
            for thread in threads:
                thread.join()
        assert not dropped, dropped
        assert answered == [200] * 480
    finally:
        stop(server.process)
