"""Pipe aliases in the runner: real commands run as TMAIL_PIPE_USER, their exit status read."""

from __future__ import annotations

import dataclasses
import email
import os
import pwd
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from queue_runner.delivery import Runner
from tests.conftest import tmail_env, wait_until
from tmail import config as tmail_config
from tmail.config import Config, ConfigError
from tmail.queue import QueueStore, Record, Status, Target

LIST = "list@local.test"
ORIGINAL = "Sales@Local.test"
SENDER = "s@sender.test"
MESSAGE = (b"From: s@sender.test\r\nMessage-ID: <pipe1@sender.test>\r\nSubject: to a program\r\n"
           b"\r\nbody line\r\n")


@pytest.fixture
def drop() -> Iterator[Path]:
    """A directory the pipe user can write (the test's tmp dir is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="tmail-pipe-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return tmail_config.load(tmail_env(tmp_path, TMAIL_LOCAL_DOMAINS="local.test",
                                       TMAIL_PIPE_TIMEOUT="2", TMAIL_RETRY_MIN_BACKOFF="1",
                                       TMAIL_RETRY_MAX_BACKOFF="4"))


@pytest.fixture
def store(config: Config) -> QueueStore:
    return QueueStore(config.queue_dir)


@pytest.fixture
def runner(config: Config) -> Iterator[Runner]:
    built = Runner.build(config)
    yield built
    built.shutdown()


def shell(script: str, *args: str) -> str:
    """A pipe command running ``script`` with /bin/sh, quoted as an admin would write it."""
    return shlex.join(["/bin/sh", "-c", script, "pipe-test", *args])


def queue_pipe(store: QueueStore, command: str) -> Record:
    [record] = store.enqueue(MESSAGE, SENDER, [Target(LIST, orig_rcpt=ORIGINAL, pipe=command)])
    return record


def dsns(store: QueueStore) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(store.read_raw(r.id), policy=policy.default)
            for r in store.iter_records(None) if r.mail_from == ""]


def recipient_block(dsn: email.message.EmailMessage) -> email.message.Message:
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return part.get_payload()[1]


def test_a_pipe_gets_the_message_and_its_envelope_as_the_pipe_user(
    runner: Runner, store: QueueStore, drop: Path
) -> None:
    record = queue_pipe(store, shell('cat > "$1/message"; env > "$1/env"; id -u > "$1/uid"; '
                                     'id -G > "$1/groups"; pwd > "$1/cwd"', str(drop)))
    assert store.get(record.id).to_json()["Transport"] == "pipe"
    assert runner.run_once() == 1
    assert store.get(record.id) is None and dsns(store) == []
    content = (drop / "message").read_bytes()
    assert content == (f"Return-Path: <{SENDER}>\nDelivered-To: {LIST}\n".encode()
                       + MESSAGE.replace(b"\r\n", b"\n"))
    env = dict(line.split("=", 1) for line in (drop / "env").read_text().splitlines()
               if "=" in line)
    assert (env["SENDER"], env["RECIPIENT"], env["ORIGINAL_RECIPIENT"]) == (
        SENDER, LIST, ORIGINAL)
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and "PYTHONPATH" not in env
    assert not any(name.startswith("TMAIL_") for name in env)
    nobody = pwd.getpwnam("nobody")
    assert int((drop / "uid").read_text()) == nobody.pw_uid
    assert (drop / "groups").read_text().split() == [str(nobody.pw_gid)]  # no root groups
    assert (drop / "cwd").read_text().strip() == "/"


def test_no_shell_expansion_of_the_command(runner: Runner, store: QueueStore,
                                           drop: Path) -> None:
    # A shell would expand $HOME, the glob and run the second command; no shell does none.
    record = queue_pipe(store, f"/bin/echo $HOME * ; touch {drop}/pwned")
    runner.run_once()
    assert store.get(record.id) is None and not (drop / "pwned").exists()


def test_exit_75_defers_with_the_commands_error(runner: Runner, store: QueueStore) -> None:
    record = queue_pipe(store, shell('echo "mailbox locked, try later" >&2; exit 75'))
    runner.run_once()
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED and deferred.delivery_failed_count == 1
    assert deferred.last_error.startswith("451 4.3.0 /bin/sh: temporary failure")
    assert "mailbox locked, try later" in deferred.last_error and dsns(store) == []


def test_other_exit_statuses_bounce_with_the_first_stderr_line(runner: Runner,
                                                               store: QueueStore) -> None:
    record = queue_pipe(store, shell('echo "no such list: $RECIPIENT" >&2; '
                                     'echo "second line" >&2; exit 1'))
    runner.run_once()
    assert store.get(record.id) is None
    [dsn] = dsns(store)
    block = recipient_block(dsn)
    assert block["Diagnostic-Code"] == f"x-unix; no such list: {LIST}"
    assert (block["Action"], block["Status"]) == ("failed", "5.3.0")
    assert block["Original-Recipient"] == f"rfc822; {ORIGINAL}"
    assert block["Final-Recipient"] == f"rfc822; {LIST}"
    assert "Remote-MTA" not in block


def test_a_flood_of_hostile_stderr_is_bounded_and_cleaned(runner: Runner,
                                                         store: QueueStore) -> None:
    queue_pipe(store, shell(r"printf 'bad\033[31m\rInjected: yes' >&2; "
                            "head -c 20000000 /dev/zero | tr '\\000' x >&2; exit 67"))
    runner.run_once()
    [dsn] = dsns(store)
    block = recipient_block(dsn)
    assert block["Status"] == "5.1.1"  # EX_NOUSER, as Postfix maps it
    assert block["Diagnostic-Code"] == "x-unix; bad?[31m"
    assert "Injected" not in str(block)  # the CR ended the first line


def test_a_command_over_its_time_limit_is_killed_with_its_children_and_deferred(
    runner: Runner, store: QueueStore, drop: Path
) -> None:
    record = queue_pipe(store, shell('sleep 300 & echo $! > "$1/child"; wait', str(drop)))
    started = time.monotonic()
    runner.run_once()
    assert time.monotonic() - started < 15
    deferred = store.get(record.id)
    assert deferred.status == Status.SCHEDULED
    assert "4.3.0 /bin/sh: command time limit of 2s exceeded" in deferred.last_error
    child = int((drop / "child").read_text())

    def gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"  # killed; reaped by whoever adopted it

    assert wait_until(gone, timeout=10)


def test_other_deliveries_go_on_while_a_pipe_runs(config: Config, store: QueueStore,
                                                  drop: Path) -> None:
    # The first pipe ends well only if the second one runs while it waits for it.
    waiting = queue_pipe(store, shell('while [ ! -e "$1/quick" ]; do sleep 0.05; done',
                                      str(drop)))
    quick = queue_pipe(store, shell('touch "$1/quick"', str(drop)))
    runner = Runner.build(dataclasses.replace(config, pipe_timeout=30))
    try:
        runner.run_once()
    finally:
        runner.shutdown()
    assert store.get(waiting.id) is None and store.get(quick.id) is None


@pytest.mark.parametrize(("command", "error"), [
    ("/nonexistent/program", "451 4.3.5 cannot run /nonexistent/program"),
    ("/bin/echo 'unbalanced", "451 4.3.5 pipe command cannot be split"),
])
def test_a_command_that_cannot_start_defers(runner: Runner, store: QueueStore, command: str,
                                            error: str) -> None:
    record = queue_pipe(store, command)
    runner.run_once()
    assert store.get(record.id).last_error.startswith(error) and dsns(store) == []


def test_an_unknown_pipe_user_defers(tmp_path: Path) -> None:
    config = tmail_config.load(tmail_env(tmp_path, TMAIL_PIPE_USER="no-such-user-here"))
    store = QueueStore(config.queue_dir)
    record = queue_pipe(store, "/bin/true")
    runner = Runner.build(config)
    try:
        runner.run_once()
    finally:
        runner.shutdown()
    assert "4.3.5 TMAIL_PIPE_USER 'no-such-user-here' does not exist" in (
        store.get(record.id).last_error)


@pytest.mark.parametrize(("name", "raw"), [
    ("TMAIL_PIPE_USER", "root"), ("TMAIL_PIPE_USER", ""), ("TMAIL_PIPE_USER", "a b"),
    ("TMAIL_PIPE_TIMEOUT", "0"), ("TMAIL_PIPE_TIMEOUT", "soon"),
])
def test_bad_pipe_settings_are_refused_at_start(tmp_path: Path, name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        tmail_config.load(tmail_env(tmp_path, **{name: raw}))


def test_a_pipe_record_without_its_command_is_not_a_record(store: QueueStore) -> None:
    record = queue_pipe(store, "/bin/true")
    path = store.layout.record_json(record.id)
    path.write_text(path.read_text().replace('"Pipe": "/bin/true"', '"Pipe": ""'))
    assert store.get(record.id) is None  # quarantined, never delivered to nothing
    assert os.listdir(store.layout.quarantine)
