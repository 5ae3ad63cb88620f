"""The on-disk queue: layout, concurrency, crash safety and quarantine, on real files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tmail import faults
from tmail.queue import Envelope, EnvelopeError, QueueStore, QueueWriteError, RecordFilter, Status
from tmail.queue.layout import QueueLayout
from tmail.queue.summary import summarize

RAW = b"From: alice@example.org\r\nMessage-ID: <m1@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path / "queue", id_block=8)


def assert_consistent(layout: QueueLayout) -> list[int]:
    """Every visible record parses, has its raw message, and the raw matches its Key."""
    ids = []
    for path in layout.records.rglob("*.json"):
        data = json.loads(path.read_bytes())
        raw = layout.record_raw(data["Id"]).read_bytes()
        assert hashlib.sha1(raw).hexdigest() == data["Key"]
        assert layout.message_raw(data["Uuid"]).read_bytes() == raw
        ids.append(data["Id"])
    return sorted(ids)


def test_enqueue_writes_one_raw_file_and_one_record_per_recipient(store: QueueStore) -> None:
    records = store.enqueue(RAW, "alice@example.org", ["bob@example.net", "carol@Example.COM"],
                            auth_user="alice@example.org", client_addr="192.0.2.1")

    assert [r.id for r in records] == [1, 2]
    assert len({r.uuid for r in records}) == 1 and len(records[0].uuid) == 40
    first = records[0].to_json()
    assert first["Key"] == hashlib.sha1(RAW).hexdigest()
    assert first["MessageId"] == "m1@example.org"
    assert (first["Host"], records[1].host) == ("example.net", "example.com")
    assert first["Status"] == 2 and first["DeliveryFailedCount"] == 0
    layout = store.layout
    assert os.stat(layout.message_raw(records[0].uuid)).st_nlink == 3  # Uuid name + 2 records
    assert json.loads(layout.record_json(2).read_bytes())["RcptTo"] == "carol@Example.COM"
    assert store.get(2) == records[1]
    assert assert_consistent(layout) == [1, 2]


def test_ids_are_never_reused_across_restarts(tmp_path: Path) -> None:
    first = QueueStore(tmp_path / "q", id_block=100).enqueue(RAW, "", ["a@b.org"])[0]
    again = QueueStore(tmp_path / "q", id_block=100).enqueue(RAW, "", ["a@b.org"])[0]
    assert again.id > first.id


def test_removing_the_last_record_removes_the_raw_message(store: QueueStore) -> None:
    records = store.enqueue(RAW, "a@b.org", ["x@y.org", "z@y.org"])
    raw_path = store.layout.message_raw(records[0].uuid)
    for record in records:
        assert raw_path.exists()
        with store.locked(record.id) as locked:
            assert locked is not None
            locked.remove()
    assert not raw_path.exists()
    assert list(store.iter_ids()) == []


def test_listing_is_sorted_by_id_across_leaf_directories(store: QueueStore) -> None:
    store._ids.allocate(998)  # the next message straddles records/000/000 and 000/001
    store.enqueue(RAW, "a@b.org", [f"u{n}@y.org" for n in range(5)])
    ids = [record.id for record in store.iter_records()]
    assert ids == list(range(999, 1004))
    assert list(store.iter_ids(after=1000)) == [1001, 1002, 1003]


def test_concurrent_threads_get_unique_ids_and_intact_files(store: QueueStore) -> None:
    def worker(n: int) -> None:
        for i in range(25):
            store.enqueue(RAW + f"{n}-{i}".encode(), "a@b.org", ["x@y.org", "z@y.org"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert assert_consistent(store.layout) == list(range(1, 401))


def test_concurrent_processes_get_unique_ids(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from tmail.queue import QueueStore
        store = QueueStore(Path(sys.argv[1]), id_block=7)
        for i in range(40):
            store.enqueue(b"Subject: %d\\r\\n\\r\\nx\\r\\n" % i, "a@b.org", ["x@y.org"])
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "q")], cwd=REPO)
        for _ in range(4)
    ]
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0, 0, 0]
    ids = assert_consistent(QueueLayout(tmp_path / "q"))
    assert len(ids) == len(set(ids)) == 160


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tmail.queue import QueueStore
    store = QueueStore(Path(sys.argv[1]))
    if sys.argv[2] == "enqueue":
        store.enqueue(b"Subject: crash\\r\\n\\r\\nx\\r\\n", "a@b.org", ["x@y.org", "z@y.org"])
    else:
        with store.locked(1) as locked:
            if sys.argv[2] == "update":
                locked.write(locked.record.evolve(last_error="new"))
            else:
                locked.remove()
    """
)


@pytest.mark.parametrize(
    ("operation", "fault"),
    [
        ("enqueue", "enqueue:raw-written"),
        ("enqueue", "enqueue:raw-linked"),
        ("enqueue", "enqueue:record-renamed"),
        ("update", "replace:temp-written"),
        ("remove", "remove:record-unlinked"),
    ],
)
def test_sigkill_at_any_step_leaves_no_partial_state(
    tmp_path: Path, operation: str, fault: str
) -> None:
    root = tmp_path / "q"
    store = QueueStore(root)
    before = store.enqueue(RAW, "a@b.org", ["first@y.org"])[0]

    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(root), operation],
        cwd=REPO, env={**os.environ, "TMAIL_FAULT": fault}, timeout=60, check=False,
    )

    assert proc.returncode == -9
    ids = assert_consistent(store.layout)
    record = store.get(1)
    if operation == "update":
        assert record == before  # the old state, never a torn one
    if operation == "remove":
        assert record is None and ids == []
    assert store.cleanup(grace=0) >= 0
    assert assert_consistent(store.layout) == ids
    # After cleanup nothing is left that no record refers to.
    assert not list(store.layout.tmp.iterdir())
    for raw in store.layout.messages.rglob("*.eml"):
        assert raw.stat().st_nlink >= 2
    for link in store.layout.records.rglob("*.eml"):
        assert link.with_suffix(".json").exists()


def test_corrupt_record_is_quarantined_and_the_rest_still_listed(store: QueueStore) -> None:
    store.enqueue(RAW, "a@b.org", ["x@y.org", "z@y.org", "w@y.org"])
    store.layout.record_json(2).write_bytes(b'{"Id": 2, "Uuid": ')

    assert [r.id for r in store.iter_records()] == [1, 3]
    assert store.get(2) is None
    [quarantined] = store.quarantined()
    assert quarantined.id == 2 and "invalid JSON" in quarantined.reason
    assert (store.layout.quarantine / "2.json").read_bytes() == b'{"Id": 2, "Uuid": '


def test_record_whose_link_is_missing_gets_it_back(store: QueueStore) -> None:
    store.enqueue(RAW, "a@b.org", ["x@y.org"])
    store.layout.record_raw(1).unlink()
    assert store.get(1) is not None
    assert store.layout.record_raw(1).read_bytes() == RAW


def test_record_whose_raw_message_is_missing_is_quarantined(store: QueueStore) -> None:
    [record] = store.enqueue(RAW, "a@b.org", ["x@y.org"])
    store.layout.record_raw(1).unlink()
    store.layout.message_raw(record.uuid).unlink()
    assert store.get(1) is None
    assert [q.id for q in store.quarantined()] == [1]
    assert "raw message is missing" in store.quarantined()[0].reason


def test_claim_excludes_other_claimants_and_reads_as_status_zero(store: QueueStore) -> None:
    store.enqueue(RAW, "a@b.org", ["x@y.org"])
    with store.claimed(1) as claim:
        assert claim is not None
        with store.claimed(1) as second:
            assert second is None  # another thread or process: refused
        with store.locked(1) as locked:
            assert locked is not None and locked.in_delivery
        assert store.get(1).status == Status.IN_DELIVERY
    assert store.get(1).status == Status.SCHEDULED  # the claim died with its file


def statuses_seen(store: QueueStore) -> dict[str, object]:
    """What every reader of the queue says about record 1's status."""
    return {
        "get": store.get(1).status,
        "records": [r.status for r in store.iter_records()],
        "listing": [json.loads(data)["Status"] for _, data in store.iter_raw_records()],
        "parsed": [parsed["Status"] for parsed, _ in store.iter_raw_records()],
        "filter 0": [p["Id"] for p, _ in store.iter_raw_records(RecordFilter(status=Status(0)))],
        "summary": dict(summarize(store).by_status),
    }


def test_every_reader_derives_status_zero_from_the_claim_not_from_the_file(
    store: QueueStore,
) -> None:
    store.enqueue(RAW, "a@b.org", ["x@y.org"])
    with store.claimed(1) as claim:
        assert claim is not None
        assert statuses_seen(store) == {"get": 0, "records": [0], "listing": [0], "parsed": [0],
                                        "filter 0": [1], "summary": {0: 1}}
        # The file keeps the scheduled state while the delivery is in progress.
        assert json.loads(store.layout.record_json(1).read_bytes())["Status"] == 2
    assert statuses_seen(store) == {"get": 2, "records": [2], "listing": [2], "parsed": [2],
                                    "filter 0": [], "summary": {2: 1}}


def test_a_status_zero_left_on_disk_by_an_older_version_reads_as_scheduled(
    store: QueueStore,
) -> None:
    store.enqueue(RAW, "a@b.org", ["x@y.org"])
    path = store.layout.record_json(1)
    path.write_bytes(path.read_bytes().replace(b'"Status": 2', b'"Status": 0'))
    assert statuses_seen(store) == {"get": 2, "records": [2], "listing": [2], "parsed": [2],
                                    "filter 0": [], "summary": {2: 1}}


def test_mutation_lock_serialises_threads(store: QueueStore) -> None:
    store.enqueue(RAW, "a@b.org", ["x@y.org"])

    def bump() -> None:
        for _ in range(20):
            with store.locked(1) as locked:
                record = locked.record
                locked.write(record.evolve(delivery_failed_count=record.delivery_failed_count + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get(1).delivery_failed_count == 80


def test_enqueue_failure_leaves_nothing_visible(store: QueueStore) -> None:
    from tmail.queue import QueueWriteError

    store.layout.tmp.rmdir()
    store.layout.tmp.write_bytes(b"not a directory")
    with pytest.raises(QueueWriteError):
        store.enqueue(RAW, "a@b.org", ["x@y.org"])
    assert list(store.iter_ids()) == []


def assert_no_debris(store: QueueStore) -> None:
    """Nothing of a failed message is left: no temp file, no raw file without its records,
    no record link without its record."""
    assert list(store.layout.tmp.iterdir()) == []
    for raw in store.layout.messages.rglob("*.eml"):
        assert raw.stat().st_nlink >= 2, raw
    for link in store.layout.records.rglob("*.eml"):
        assert link.with_suffix(".json").exists(), link


def good(n: int) -> Envelope:
    return Envelope(b"Subject: %d\r\n\r\nbody\r\n" % n, "a@b.org", [f"r{n}@y.org", f"s{n}@y.org"])


@pytest.mark.parametrize(
    "poisoned",
    [
        Envelope(RAW, "\udcff@x.org", ["x@y.org"]),  # 8-bit MAIL FROM, surrogateescape'd
        Envelope(RAW, "a@b.org", ["ok@y.org", "b\udcc3@y.org"]),
        Envelope(RAW, "a@b.org", ["x\r\nRCPT TO:<evil@y.org>@y.org"]),
        Envelope(RAW, "a@b.org", []),
    ],
    ids=["sender-not-utf8", "recipient-not-utf8", "control-character", "no-recipient"],
)
def test_a_poisoned_envelope_fails_alone_and_leaves_nothing(
    store: QueueStore, poisoned: Envelope
) -> None:
    outcomes = store.enqueue_many([good(1), poisoned, good(2)])

    assert isinstance(outcomes[1], EnvelopeError)
    assert [r.rcpt_to for r in outcomes[0]] == ["r1@y.org", "s1@y.org"]
    assert [r.rcpt_to for r in outcomes[2]] == ["r2@y.org", "s2@y.org"]
    assert len(assert_consistent(store.layout)) == 4
    assert_no_debris(store)
    with pytest.raises(EnvelopeError, match=r"not valid UTF-8|control|recipient"):
        store.enqueue(poisoned.raw, poisoned.mail_from, poisoned.rcpt_to)


ENQUEUE_FAULTS = ["enqueue:staged", "enqueue:raw-written", "enqueue:raw-linked",
                  "enqueue:record-renamed"]


@pytest.mark.parametrize("fault", ENQUEUE_FAULTS)
@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("a bug")],
    ids=["ENOSPC", "RuntimeError"],
)
def test_an_exception_at_any_enqueue_step_fails_only_its_message(
    store: QueueStore, fault: str, error: BaseException
) -> None:
    with faults.raising(fault, error):
        outcomes = store.enqueue_many([good(1), good(2), good(3)])

    [failed] = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    if isinstance(error, OSError):
        assert isinstance(failed, QueueWriteError) and failed.errno == errno.ENOSPC
    else:
        assert failed is error
    assert len(assert_consistent(store.layout)) == 4  # the two others, two recipients each
    assert_no_debris(store)


@pytest.mark.parametrize("fault", ["replace:temp-written", "remove:record-unlinked"])
def test_an_exception_while_changing_a_record_leaves_no_torn_state(
    store: QueueStore, fault: str
) -> None:
    [before] = store.enqueue(RAW, "a@b.org", ["x@y.org"])
    with (faults.raising(fault, RuntimeError("a bug")), pytest.raises(RuntimeError),
          store.locked(before.id) as locked):
        if fault == "replace:temp-written":
            locked.write(locked.record.evolve(last_error="new"))
        else:
            locked.remove()
    if fault == "replace:temp-written":
        assert store.get(before.id) == before
        assert_no_debris(store)
    else:
        assert store.get(before.id) is None
        store.cleanup(grace=0)
        assert_no_debris(store)
        assert list(store.layout.messages.rglob("*.eml")) == []


def test_an_8bit_message_id_is_stored_readably(store: QueueStore) -> None:
    raw = b"Message-ID: <\xff\xfe@x.org>\r\nSubject: s\r\n\r\nbody\r\n"
    [record] = store.enqueue(raw, "a@b.org", ["x@y.org"])
    assert record.message_id == "\ufffd\ufffd@x.org"
    assert store.get(record.id) == record


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda data: data.pop("Host"), "Host is missing"),
        (lambda data: data.update(Status="2"), "Status is missing or not int"),
        (lambda data: data.update(Status=9), "unknown Status 9"),
        (lambda data: data.update(AddedAt="yesterday"), "AddedAt"),
        (lambda data: data.update(Size=None), "Size is not int"),
    ],
    ids=["missing-key", "mistyped", "unknown-status", "bad-time", "mistyped-extension"],
)
def test_every_reader_quarantines_the_same_bad_records(store: QueueStore, change, reason) -> None:  # type: ignore[no-untyped-def]
    from tmail.queue.summary import summarize

    store.enqueue(RAW, "a@b.org", ["x@y.org", "z@y.org"])
    data = json.loads(store.layout.record_json(2).read_bytes())
    change(data)
    store.layout.record_json(2).write_text(json.dumps(data))

    assert [data["Id"] for data, _ in store.iter_raw_records()] == [1]  # the listing's path
    assert sum(summarize(store).total) == 1
    [quarantined] = store.quarantined()
    assert quarantined.id == 2 and reason in quarantined.reason
    assert [r.id for r in store.iter_records()] == [1] and store.get(2) is None


def test_a_raw_message_whose_unlink_a_crash_undid_is_a_leftover_for_cleanup(
    store: QueueStore,
) -> None:
    """Removing a message's last record does not fsync the raw file's directory: after a
    crash the raw file may be back with its Uuid name alone. Nothing reads it, and cleanup
    removes it once past the grace period."""
    [record] = store.enqueue(RAW, "a@b.org", ["x@y.org"])
    store.layout.record_json(record.id).unlink()  # the removal that was made durable
    store.layout.record_raw(record.id).unlink()
    raw = store.layout.message_raw(record.uuid)
    assert raw.stat().st_nlink == 1 and store.get(record.id) is None
    assert store.cleanup(grace=3600) == 0 and raw.exists()  # too young: maybe an enqueue
    assert store.cleanup(grace=0) == 1 and not raw.exists()
    assert_no_debris(store)
