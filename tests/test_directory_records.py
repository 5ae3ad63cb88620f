"""What alias expansion writes into the queue: one record per target, with OrigRcpt, a
mini-list's sender and a pipe's Transport (real queue files in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import orjson

from tmail.queue import QueueStore, Target

RAW = b"Subject: list\r\n\r\nbody\r\n"


def test_targets_become_records_with_orig_rcpt_list_sender_and_pipe(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    records = store.enqueue(RAW, "sender@remote.example", [
        Target("u1@a.test", "List@a.test", mail_from="list@a.test"),
        Target("list@a.test", "List@a.test", "/usr/bin/archive --list", "list@a.test"),
        "plain@b.test",
    ])
    files = [orjson.loads(store.layout.record_json(r.id).read_bytes()) for r in records]
    assert [(f["RcptTo"], f["MailFrom"], f.get("OrigRcpt")) for f in files] == [
        ("u1@a.test", "list@a.test", "List@a.test"),
        ("list@a.test", "list@a.test", "List@a.test"),
        ("plain@b.test", "sender@remote.example", None)]
    assert (files[1]["Transport"], files[1]["Pipe"]) == ("pipe", "/usr/bin/archive --list")
    assert "Transport" not in files[0]


def test_a_bounce_to_a_mini_list_keeps_the_null_sender(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    [record] = store.enqueue(RAW, "", [Target("u1@a.test", "list@a.test",
                                               mail_from="list@a.test")])
    assert record.mail_from == ""
