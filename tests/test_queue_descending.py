"""The queue newest first (``iter_raw_records_descending``): every record once, in ``Id``
order downwards from a cursor, reading only the leaf directories a page needs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tmail.queue import Envelope, QueueStore, RecordFilter

RAW = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
REPO = Path(__file__).resolve().parent.parent


def fill(store: QueueStore, leaves: int, per_leaf: int, gap: int = 0) -> list[int]:
    """``per_leaf`` records at the start of each of ``leaves`` leaf directories (the ids in
    between skipped), after ``gap`` ids skipped; the ids, ascending."""
    if gap:
        store._ids.allocate(gap)
    ids = []
    for n in range(leaves):
        skipped = store._ids.allocate(1)[0]
        store._ids.allocate(-(skipped + 1) % 1000)  # the next id starts a leaf
        [records] = store.enqueue_many([Envelope(
            RAW, "a@b.org", [f"u{i}@h{n % 3}.example" for i in range(per_leaf)])])
        assert not isinstance(records, Exception)
        ids += [record.id for record in records]
    return ids


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path / "queue", id_block=1)


def listed(store: QueueStore, **kwargs: object) -> list[int]:
    return [data["Id"] for data, _ in store.iter_raw_records_descending(**kwargs)]  # type: ignore[arg-type]


def test_newest_first_is_the_ascending_listing_reversed_across_leaves_and_top_dirs(
        store: QueueStore) -> None:
    # Leaves 000/001..000/004, then (a million ids later) three leaves of 001/.
    ids = fill(store, 4, 3) + fill(store, 3, 3, gap=1_000_000)
    assert ids[-1] > 1_000_000 > ids[0]
    assert listed(store) == sorted(ids, reverse=True)
    assert listed(store) == [data["Id"] for data, _ in store.iter_raw_records()][::-1]
    # A cursor: the ids below it, whether it is a record's id, a leaf's or a top's bound.
    for before in (ids[5], ids[9], 1000, 2000, 1_000_000, 1_001_000, ids[-1] + 1, 1):
        assert listed(store, before=before) == sorted(
            (i for i in ids if i < before), reverse=True), before
    assert listed(store, record_filter=RecordFilter(host="h1.example")) == sorted(
        (data["Id"] for data, _ in store.iter_raw_records(RecordFilter(host="h1.example"))),
        reverse=True)


def test_pages_by_cursor_give_every_record_once(store: QueueStore) -> None:
    ids = fill(store, 6, 7)
    seen, before = [], 0
    while page := list(itertools.islice(store.iter_raw_records_descending(before=before), 4)):
        seen += [data["Id"] for data, _ in page]
        before = page[-1][0]["Id"]
    assert seen == sorted(ids, reverse=True)


def test_newest_first_shows_the_status_every_reader_shows(store: QueueStore) -> None:
    fill(store, 1, 2)
    top = listed(store)[0]
    with store.claimed(top) as claim:
        assert claim is not None
        [(data, raw)] = itertools.islice(store.iter_raw_records_descending(), 1)
        assert data["Status"] == 0 and json.loads(raw)["Status"] == 0
        assert store.get(top).status == 0  # type: ignore[union-attr]


# Run in a child: Python's audit hooks (which see every scandir and open) cannot be removed.
COUNT_READS = textwrap.dedent(
    """
    import itertools, json, os, sys
    from pathlib import Path
    from tmail.queue import QueueStore
    store = QueueStore(Path(sys.argv[1]))
    listed, opened = set(), []
    def hook(event, args):
        if event == "os.scandir" and args[0] is not None:
            listed.add(os.path.relpath(os.fspath(args[0]), store.layout.records))
        elif event == "open" and str(args[0]).endswith(".json"):
            opened.append(int(os.path.basename(str(args[0]))[:-5]))
    sys.addaudithook(hook)
    page = itertools.islice(store.iter_raw_records_descending(before=int(sys.argv[2])), 50)
    ids = [data["Id"] for data, _ in page]
    print(json.dumps({"ids": ids, "opened": opened,
                      "leaves": sorted(path for path in listed if path.count("/") == 1)}))
    """
)


def test_a_page_near_the_top_of_a_big_tree_reads_only_the_leaves_it_shows(
        store: QueueStore) -> None:
    ids = fill(store, 100, 5)  # 100 leaves of 5 records: a page of 50 is in the top 10

    def page(before: int) -> dict[str, list]:  # type: ignore[type-arg]
        done = subprocess.run([sys.executable, "-c", COUNT_READS, str(store.layout.root),
                               str(before)], cwd=REPO, capture_output=True, text=True,
                              timeout=60, check=True)
        return json.loads(done.stdout)

    newest = sorted(ids, reverse=True)
    first = page(0)
    assert first["ids"] == first["opened"] == newest[:50]
    assert first["leaves"] == sorted({f"000/{i // 1000:03d}" for i in newest[:50]})
    assert len(first["leaves"]) == 10
    second = page(first["ids"][-1])
    assert second["ids"] == second["opened"] == newest[50:100]
    assert len(second["leaves"]) == 10  # the cursor's own leaf is above its range: skipped
