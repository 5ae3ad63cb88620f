"""What DKIM signing costs per message, as a ratio to enqueueing the same message unsigned.

    .venv/bin/python -m bench.dkim [--messages 200] [--rounds 5] [--dir DIR]

4 KiB messages (76-character lines) queued through ``QueueStore.enqueue`` (one message per
call, its fsyncs included: what ``sendmail`` does) and ``enqueue_many`` by 32 (the receiver's
group commit, where the fsyncs are shared and signing is not). Variants, on one SQLite
database with an RSA 2048 and an Ed25519 key:

* unsigned: a store without a signer (the baseline);
* anonymous client: the signer installed, the client untrusted (what every MX message pays:
  the ``From:`` parsed and the relay networks checked);
* RSA / Ed25519: a trusted submitter, signed with dkimpy and rewritten with its header.

Rounds interleave the variants so that noise from the shared machine hits all of them alike;
the table gives medians over rounds and ratios to the unsigned figure of the same mode.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tmail import config as tmail_config  # noqa: E402
from tmail.db import Database  # noqa: E402
from tmail.directory.domains import DomainStore  # noqa: E402
from tmail.directory.lookup import Directory  # noqa: E402
from tmail.dkim.keys import KeyStore  # noqa: E402
from tmail.dkim.signing import DkimSigner  # noqa: E402
from tmail.queue import Envelope, QueueStore  # noqa: E402

BATCH = 32


def message(domain: str) -> bytes:
    head = (f"From: Bench <bench@{domain}>\r\nTo: someone@example.net\r\nSubject: bench\r\n"
            f"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <b@{domain}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode()
    body = (b"x" * 76 + b"\r\n") * ((4096 - len(head)) // 78)
    return head + body + b"x" * (4096 - len(head) - len(body))


VARIANTS = {  # name -> (From domain, submitter, signed)
    "unsigned (no signer)": ("rsa.bench.test", {"auth_user": "bench@rsa.bench.test"}, False),
    "anonymous client (signer, untrusted)": ("rsa.bench.test", {"client_addr": "203.0.113.9"},
                                             True),
    "RSA 2048, trusted": ("rsa.bench.test", {"auth_user": "bench@rsa.bench.test"}, True),
    "Ed25519, trusted": ("ed.bench.test", {"auth_user": "bench@ed.bench.test"}, True),
}


def setup(base: Path) -> tuple[Database, DkimSigner]:
    database = Database(f"sqlite:///{base / 'users.db'}")
    database.migrate()
    for domain, algorithm in (("rsa.bench.test", "rsa"), ("ed.bench.test", "ed25519")):
        DomainStore(database).create(domain, local=True)
        KeyStore(database).create(domain, algorithm, "bench")
    config = tmail_config.load({"TMAIL_DATA_DIR": str(base)})
    return database, DkimSigner(database, Directory(database, config))


def run(store: QueueStore, envelope: Envelope, count: int, batch: int) -> float:
    """Seconds per message."""
    start = time.perf_counter()
    for offset in range(0, count, batch):
        outcomes = store.enqueue_many([envelope] * min(batch, count - offset))
        if any(isinstance(outcome, Exception) for outcome in outcomes):
            raise RuntimeError(outcomes)
    return (time.perf_counter() - start) / count


def measure(base: Path, signer: DkimSigner, messages: int, rounds: int
            ) -> dict[tuple[str, int], list[float]]:
    stores = {signed: QueueStore(base / ("signed" if signed else "plain"), id_block=256,
                                 signer=signer if signed else None) for signed in (False, True)}
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for batch in (1, BATCH):
            for name, (domain, submitter, signed) in VARIANTS.items():
                envelope = Envelope(message(domain), "bench@" + domain, ["someone@example.net"],
                                    **submitter)
                results.setdefault((name, batch), []).append(
                    run(stores[signed], envelope, messages, batch))
    return results


def table(results: dict[tuple[str, int], list[float]]) -> str:
    lines = ["| variant | mode | ms per message (median) | ratio to unsigned |",
             "| --- | --- | ---: | ---: |"]
    for batch in (1, BATCH):
        base = statistics.median(results[(next(iter(VARIANTS)), batch)])
        mode = "enqueue, 1 per call" if batch == 1 else f"enqueue_many, {batch} per call"
        for name in VARIANTS:
            value = statistics.median(results[(name, batch)])
            lines.append(f"| {name} | {mode} | {value * 1000:.3f} | {value / base:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="where to queue (default: a temp dir)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-dkim-", dir=args.dir))
    try:
        database, signer = setup(base)
        results = measure(base, signer, args.messages, args.rounds)
        database.dispose()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"DKIM signing, 4 KiB messages, {args.messages} per variant, {args.rounds} rounds "
          f"(interleaved), SQLite")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())


