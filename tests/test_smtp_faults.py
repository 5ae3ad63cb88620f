"""The receiver under faults, for real: a queue on a full file system, and a thousand idle
connections at once."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from pathlib import Path

from tests.conftest import stop, tmail_env, wait_until
from tests.filesystems import fill, small_tmpfs
from tests.smtp_helpers import LOCAL, RawClient, add_users, start_receiver

BIG = b"Subject: big\r\n\r\n" + (b"z" * 98 + b"\r\n") * 30_000 + b".\r\n"  # 3 MB
SMALL = b"Subject: small\r\n\r\nhello\r\n.\r\n"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in {
        "counter", "notify", "filler", "ids", "lock"})


def test_a_queue_on_a_full_file_system_answers_452_and_leaves_nothing(tmp_path: Path) -> None:
    env = tmail_env(tmp_path)
    queue_dir = Path(env["TMAIL_DATA_DIR"]) / "queue"
    queue_dir.parent.mkdir(parents=True)
    with small_tmpfs(tmp_path, "2m") as mount:
        queue_dir.symlink_to(mount)
        add_users(env)
        receiver = start_receiver(env, tmp_path / "receiver.log")
        try:
            baseline = files_under(mount)
            with receiver.raw() as client:
                client.command(b"EHLO full.test")
                reply = client.transaction(BIG)
                assert reply.startswith(b"452 4.3.1"), reply  # does not fit: refused
                assert files_under(mount) == baseline  # no spool, no raw file, no record
                assert client.transaction(SMALL).startswith(b"250 2.0.0")  # room again
                fill(mount)
                reply = client.transaction(SMALL)
                assert reply[:9] in (b"452 4.3.1", b"451 4.3.0"), reply
                (mount / "filler").unlink()
                assert client.transaction(SMALL).startswith(b"250 2.0.0")
            assert receiver.leftovers() == []
            assert len(list(receiver.queue.iter_ids())) == 2
        finally:
            stop(receiver.process)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


IDLE = 1000


def test_a_thousand_idle_connections_neither_block_new_clients_nor_grow_memory(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE + 500), hard))
    env = tmail_env(tmp_path, TMAIL_SMTP_MAX_SESSIONS=str(IDLE + 100),
                    TMAIL_SMTP_MAX_SESSIONS_PER_IP=str(IDLE + 100))
    add_users(env)
    receiver = start_receiver(env, tmp_path / "receiver.log")
    idle: list[socket.socket] = []
    try:
        with receiver.raw() as warm:  # the first session loads what every session needs
            warm.command(b"EHLO warm.test")
            assert warm.transaction(SMALL).startswith(b"250")
        before = rss_kib(receiver.process.pid)
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", receiver.port), timeout=30))
        assert wait_until(lambda: _greeted(idle[-1]), timeout=30)
        answered_in = min(_new_client_served_in(receiver.port) for _ in range(3))
        growth_mib = (rss_kib(receiver.process.pid) - before) / 1024
        print(f"{IDLE} idle sessions: RSS +{growth_mib:.1f} MiB, a new client served in "
              f"{answered_in:.3f} s")
        assert answered_in < 1.0, answered_in
        assert growth_mib < 64, growth_mib  # about 30 KiB a session
    finally:
        for sock in idle:
            with contextlib.suppress(OSError):
                sock.close()
        stop(receiver.process)


def _new_client_served_in(port: int) -> float:
    """Seconds for a new client's whole session (the best of a few on a shared machine)."""
    started = time.monotonic()
    with RawClient(port, timeout=5) as client:
        assert client.greeting.startswith(b"220")
        assert client.command(b"EHLO new.test").startswith(b"250")
        assert client.transaction(SMALL, rcpt=b"bob@" + LOCAL.encode()).startswith(b"250")
    return time.monotonic() - started


def _greeted(sock: socket.socket) -> bool:
    sock.settimeout(1)
    try:
        return sock.recv(512).startswith(b"220")
    except TimeoutError:
        return False

