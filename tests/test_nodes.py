"""Several tmail nodes: each names itself (``TMAIL_NODE``), and what it queues and counts
says which node it was."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from tests.conftest import start_api, stop, tmail_env
from tests.smtp_helpers import start_receiver
from tests.test_metrics import samples, value
from tmail import config as tmail_config
from tmail.config import ConfigError
from tmail.queue import QueueStore
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
