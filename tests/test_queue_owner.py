"""Files written by root (a cron job's ``sendmail``, an admin's CLI) never stop the queue's
owner: the commands write as the owner, and a record that cannot be read is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import tmail_env
from tests.users_helper import NOBODY, everyone_python, python_path, shared_dir
from tmail.queue import QueueStore

RAW = b"Subject: cron\r\n\r\nreport\r\n"

READER = textwrap.dedent(
    """
    import json, logging, sys
    from pathlib import Path
    from tmail.queue import QueueStore
    from tmail.queue.summary import summarize
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    store = QueueStore(Path(sys.argv[1]))
    unreadable = int(sys.argv[2])
    result = {"passes": [[r.id for r in store.iter_records()] for _ in range(3)]}
    result["raw"] = [data["Id"] for data, _ in store.iter_raw_records()]
    result["summary"] = sum(summarize(store).total)
    result["get"] = store.get(unreadable) is None
    with store.locked(unreadable) as locked:
        result["locked"] = locked is None
    with store.claimed(unreadable) as fd:
        result["claimed"] = fd is None
    store.cleanup(grace=0)
    result["quarantined"] = [q.id for q in store.quarantined()]
    print(json.dumps(result))
    """
)

DELIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tmail.queue import QueueStore
    store = QueueStore(Path(sys.argv[1]))
    with store.claimed(1) as fd, store.locked(1) as locked:
        assert fd is not None and locked is not None
        locked.remove()
    print("delivered")
    """
)


def run_as_nobody(python: list[str], *args: str,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*python, *args], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
        env={**(env or {}), "PYTHONPATH": python_path(), "PATH": os.environ.get("PATH", "")},
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("where", ["file", "directory"])
def test_a_record_only_root_can_read_is_skipped_and_logged_once(where: str) -> None:
    with everyone_python() as python, shared_dir() as base:
        root = base / "queue"
        root.mkdir()
        os.chown(root, NOBODY, NOBODY)
        setup = run_as_nobody(python, "-c", "import sys; from pathlib import Path; "
                              "from tmail.queue import QueueStore; "
                              "QueueStore(Path(sys.argv[1])).enqueue(b'x', 'a@b.org', ['r@y.org'])",
                              str(root))
        assert setup.returncode == 0, setup.stderr
        store = QueueStore(root)  # root, as a cron job running an old sendmail would
        if where == "directory":
            store.layout.counter.write_text("5000\n")  # its record lands in a new leaf
        [alien] = store.enqueue(RAW, "cron@example.org", ["ops@example.org"])
        os.chown(store.layout.counter, NOBODY, NOBODY)
        if where == "directory":
            os.chmod(store.layout.record_dir(alien.id), 0o700)

        done = run_as_nobody(python, "-c", READER, str(root), str(alien.id))

        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["passes"] == [[1]] * 3 and result["raw"] == [1]
        assert result["summary"] == 1
        assert result["get"] and result["locked"] and result["claimed"]
        assert result["quarantined"] == []  # not broken, only not ours: left where it is
        warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
        paths = [line.split()[3] for line in warnings]
        assert warnings and len(paths) == len(set(paths)), done.stderr  # once, not every pass
        assert all("cannot read" in line and "chown" in line for line in warnings)
        assert store.layout.record_json(alien.id).exists()


def owned_by_nobody(path: Path) -> list[Path]:
    """Every file and directory under ``path`` that is not owned by nobody."""
    return [p for p in [path, *path.rglob("*")] if p.lstat().st_uid != NOBODY]


def test_the_cli_run_by_root_writes_the_queue_as_its_owner() -> None:
    with everyone_python() as python, shared_dir() as base:
        data = base / "var"
        (data / "queue").mkdir(parents=True)
        os.chown(data, NOBODY, NOBODY)
        os.chown(data / "queue", NOBODY, NOBODY)
        env = {**tmail_env(base), "PYTHONPATH": python_path()}

        sent = subprocess.run([*python, "-m", "tmail", "sendmail", "ops@example.org"],
                              input=RAW, env=env, capture_output=True, timeout=120, check=False)
        assert sent.returncode == 0, sent.stderr
        held = subprocess.run([*python, "-m", "tmail", "queue", "hold", "1"],
                              env=env, capture_output=True, timeout=120, check=False)
        assert held.returncode == 0, held.stderr

        assert owned_by_nobody(data / "queue") == []
        # the runner's way of reading, as the owner (the CLI has nothing to switch here)
        done = run_as_nobody(python, "-m", "tmail", "queue", "list", "--json", env=env)
        assert done.returncode == 0, done.stderr
        [record] = [json.loads(line) for line in done.stdout.splitlines()]
        assert record["RcptTo"] == "ops@example.org" and record["Status"] == 4
        # and it can do what a delivery does: claim the record, then remove it and its message
        done = run_as_nobody(python, "-c", DELIVER, str(data / "queue"))
        assert done.stdout.strip() == "delivered", done.stderr
        assert list((data / "queue").rglob("*.json")) == []
        assert list((data / "queue" / "messages").rglob("*.eml")) == []


def test_the_cli_refuses_a_queue_it_cannot_write_as_its_owner() -> None:
    with everyone_python() as python, shared_dir() as base:
        data = base / "var"
        (data / "queue").mkdir(parents=True)  # owned by root: nobody may not write it
        env = {**tmail_env(base), "PYTHONPATH": python_path()}
        os.chmod(data, 0o755)
        done = subprocess.run(
            [*python, "-m", "tmail", "sendmail", "ops@example.org"], input=RAW,
            env=env, user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
            timeout=120, check=False,
        )
        assert done.returncode == 77, done.stderr  # EX_NOPERM
        assert b"belongs to uid 0" in done.stderr
        assert list((data / "queue").rglob("*.json")) == []
