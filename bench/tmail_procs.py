"""tmail's processes for the benchmarks, started as ``make run`` starts them, on a fresh data dir.

Shared by ``bench.run`` (receiver and runner side by side with Postfix) and
``bench.deferred`` (the runner alone over a big deferred queue), so that both measure the same
programs with the same settings. Each program is ``python -m <package>`` with its default
worker processes; the figures then describe what an admin would deploy.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.postfix import RCPT
from bench.smtp_tools import free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Tmail:
    env: dict[str, str]
    port: int  # the receiver's, 0 when no receiver runs
    mailboxes: Path
    processes: dict[str, subprocess.Popen[bytes]]  # program -> its main (supervisor) process
    logs: Path

    def pid(self, program: str) -> int:
        return self.processes[program].pid

    def check_running(self) -> None:
        """Raise, with the end of its log, if a program has exited: a figure measured
        against a dead daemon would be a figure of nothing."""
        for program, process in self.processes.items():
            if process.poll() is not None:
                log = (self.logs / f"{program}.log").read_text(errors="replace")
                raise RuntimeError(f"{program} exited with {process.returncode}:\n"
                                   + "\n".join(log.splitlines()[-10:]))


def tmail_env(base: Path, *, smtp_port: int = 0, route_port: int | None = None) -> dict[str, str]:
    """The environment of every tmail program of one benchmark instance.

    ``TMAIL_RELAY_NETWORKS`` lets smtp-source relay through loopback; ``TMAIL_ROUTES`` sends
    every remote domain to the loopback sink, so no DNS is ever asked.
    """
    env = {**os.environ, "TMAIL_DATA_DIR": str(base / "var"),
           "TMAIL_MAILBOXES_DIR": str(base / "mailboxes"), "TMAIL_HOSTNAME": "mx.bench.local",
           "TMAIL_RELAY_NETWORKS": "127.0.0.0/8", "PYTHONPATH": str(REPO)}
    if smtp_port:
        env["TMAIL_SMTP_BIND"] = f"127.0.0.1:{smtp_port}"
    if route_port is not None:
        env["TMAIL_ROUTES"] = f"*=127.0.0.1:{route_port}"
    return env


@contextlib.contextmanager
def tmail(base: Path, *, receiver: bool = True, runner: bool, route_port: int | None = None,
          mailbox: bool = False) -> Iterator[Tmail]:
    """The receiver and/or the daemon runner on a fresh data dir under ``base``; stopped
    (SIGTERM, as an admin stops them) when the block ends. Their stderr goes to
    ``base/<program>.log``."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port() if receiver else 0
    env = tmail_env(base, smtp_port=port, route_port=route_port)
    if mailbox:
        from tmail.db import Database
        from tmail.users import UserStore

        database = Database(f"sqlite:///{base / 'var' / 'users.db'}")
        database.migrate()
        UserStore(database, base / "mailboxes").create(
            RCPT, "bench-password", have_mailbox=True, mailbox_quota="")
    programs = (["smtp_receiver"] if receiver else []) + (["queue_runner"] if runner else [])
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as logs:
        try:
            for program in programs:
                log = logs.enter_context(open(base / f"{program}.log", "wb"))
                processes[program] = subprocess.Popen(
                    [sys.executable, "-m", program], cwd=REPO, env=env,
                    stdout=subprocess.DEVNULL, stderr=log)
            if receiver:
                wait_listening(port, 30, processes["smtp_receiver"])
            yield Tmail(env, port, base / "mailboxes", processes, base)
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(timeout=60)
