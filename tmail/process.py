"""Start-up shared by the long-running processes: one log format, configuration checked once."""

from __future__ import annotations

import logging
import sys

from tmail import config as tmail_config

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def start(program: str) -> tmail_config.Config | None:
    """Set up logging to stderr and load the configuration; ``None`` (after saying why on
    stderr) when a setting is bad, so that ``main`` can exit with status 2."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    try:
        return tmail_config.load()
    except tmail_config.ConfigError as exc:
        print(f"{program}: configuration: {exc}", file=sys.stderr)
        return None
