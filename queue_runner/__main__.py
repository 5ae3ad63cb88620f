"""``python -m queue_runner`` (daemon) or ``python -m queue_runner --once`` (cron)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from queue_runner.daemon import Daemon
from queue_runner.delivery import Runner
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
        runner = Runner.build(config)
        if args.once:
            attempts = runner.run_once()
            runner.shutdown()
            logging.getLogger("queue_runner").info("--once: %d attempt(s)", attempts)
            return 0
        daemon = Daemon(runner)
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())
        daemon.run()
        return 0
    except OSError as exc:
        print(f"queue_runner: cannot read the queue: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
