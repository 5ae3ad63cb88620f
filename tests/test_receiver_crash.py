"""The receiver killed with SIGKILL under load: every message that got a ``250`` is in the
queue, byte for byte, once the receiver is back; nothing half-written is visible."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import smtplib
import threading
import time
from pathlib import Path

from tests.conftest import stop, tmail_env, wait_until
from tests.test_smtp_receiver import start_receiver
from tmail.queue import QueueStore

CLIENTS = 20
DEADLINE = 60.0  # seconds for the whole load phase, whatever happens (pytest-timeout: 120)


def message(client: int, n: int) -> bytes:
    """A distinct message per send, from 1 KB to ~150 KB, CRLF as smtplib sends it."""
    lines = [b"From: c%d@sender.test" % client, b"To: r@remote.test",
             b"Subject: crash test %d/%d" % (client, n), b""]
    lines += [b"client %02d message %04d line %05d ..........." % (client, n, i)
              for i in range(20 + (client * 7919 + n * 104729) % 3000)]
    return b"\r\n".join(lines) + b"\r\n"


def strip_received(raw: bytes) -> bytes:
    """The message without the trace header the receiver put on top (with its folds)."""
    assert raw.startswith(b"Received: "), raw[:100]
    end = raw.index(b"\r\n") + 2
    while raw[end:end + 1] in (b" ", b"\t"):
        end = raw.index(b"\r\n", end) + 2
    return raw[end:]


def load(port: int, accepted: list[tuple[str, bytes]],
         stopping: threading.Event) -> list[threading.Thread]:
    """20 sessions sending until the server dies (or the deadline): (uuid, sent) per 250."""
    lock = threading.Lock()
    start = time.monotonic()

    def client(index: int) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                              timeout=15) as smtp:
                smtp.ehlo()
                while not stopping.is_set() and time.monotonic() - start < DEADLINE:
                    body = message(index, n)
                    smtp.mail(f"c{index}@sender.test")
                    smtp.rcpt("r@remote.test")
                    code, reply = smtp.data(body)
                    if code == 250:
                        with lock:
                            accepted.append((reply.decode().rsplit(" ", 1)[1], body))
                    n += 1
        except (OSError, smtplib.SMTPException):
            pass  # the server was killed under us: what was not answered 250 may be lost

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def test_messages_answered_250_survive_a_sigkill_of_the_receiver(tmp_path: Path) -> None:
    env = tmail_env(tmp_path, TMAIL_RELAY_NETWORKS="127.0.0.0/8", TMAIL_SMTP_PROCESSES="1")
    receiver = start_receiver(env, tmp_path / "receiver-1.log")
    accepted: list[tuple[str, bytes]] = []
    stopping = threading.Event()
    threads = load(receiver.port, accepted, stopping)
    try:
        assert wait_until(lambda: len(accepted) >= 100, timeout=DEADLINE / 2), \
            (tmp_path / "receiver-1.log").read_text()
        os.kill(receiver.process.pid, signal.SIGKILL)  # in the middle of sessions and batches
        receiver.process.wait(timeout=30)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    answered = list(accepted)

    again = start_receiver(env, tmp_path / "receiver-2.log")
    try:
        with again.smtp() as smtp:  # and it works again on the same queue
            smtp.sendmail("after@sender.test", ["r@remote.test"], message(99, 0))
    finally:
        stop(again.process)

    store = QueueStore(receiver.queue.layout.root)
    by_uuid: dict[str, list[int]] = {}
    for record in store.iter_records():
        by_uuid.setdefault(record.uuid, []).append(record.id)
        raw = store.read_raw(record.id)
        assert raw is not None and hashlib.sha1(raw).hexdigest() == record.key
    for uuid, sent in answered:
        assert uuid in by_uuid, f"{uuid} was answered 250 and is not in the queue"
        assert strip_received(store.read_raw(by_uuid[uuid][0])) == sent
    # What the crash left (spools, unlinked raws) is invisible and goes at cleanup.
    store.cleanup(grace=0)
    assert list(store.layout.tmp.iterdir()) == []
    for path in store.layout.records.rglob("*.json"):
        json.loads(path.read_bytes())
    print(f"{len(answered)} messages answered 250 before the kill, all found")

