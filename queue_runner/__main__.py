"""``python -m queue_runner`` (daemon) or ``python -m queue_runner --once`` (cron).

The daemon runs TMAIL_RUNNER_PROCESSES worker processes (:mod:`tmail.workers`), each
delivering its share of the messages (by Uuid); ``--once`` is one process, as cron starts it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from queue_runner.daemon import Daemon
from queue_runner.delivery import Runner
from tmail import workers
from tmail.config import Config
from tmail.process import start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m queue_runner",
                                     description="deliver the queued mail")
    parser.add_argument("--once", action="store_true",
                        help="deliver what is due now, then exit (for cron)")
    args = parser.parse_args(argv)
    config = start("queue_runner")
    if config is None:
        return 2
    try:
        if args.once:
            runner = Runner.build(config)
            attempts = runner.run_once()
            runner.shutdown()
            logging.getLogger("queue_runner").info("--once: %d attempt(s)", attempts)
            return 0
        count = config.runner_processes
        if count == 1:
            run_daemon(config, (0, 1))
        else:
            workers.supervise(lambda index: run_daemon(config, (index, count)), count)
        return 0
    except OSError as exc:
        print(f"queue_runner: cannot read the queue: {exc}", file=sys.stderr)
        return 1


def run_daemon(config: Config, partition: tuple[int, int]) -> None:
    """One daemon (one worker process): its share of the messages, until SIGTERM."""
    daemon = Daemon(Runner.build(config, partition=partition))
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop_from_signal())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop_from_signal())
    daemon.run()


if __name__ == "__main__":
    sys.exit(main())
