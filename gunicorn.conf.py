"""gunicorn settings for the admin API, derived from tmail's configuration.

Checked before any worker starts: a bad setting, or the default admin password on a
non-loopback address, stops gunicorn with the reason.
"""

import sys

from app.services import sign_in_db
from app.throttle import SqliteThrottle
from tmail import config as tmail_config
from tmail.metrics import Counters
from tmail.queue import QueueStore
from tmail.tls import ensure_certificate
from tmail.users import open_store

try:
    _config = tmail_config.load()
    tmail_config.check_api_exposure(_config)
except tmail_config.ConfigError as exc:
    sys.exit(f"tmail: {exc}")

certfile, keyfile = (str(path) for path in ensure_certificate(_config))
# Migrate the database and create the queue tree once, before the workers fork.
open_store(_config)
QueueStore(_config.queue_dir)
Counters(_config.metrics_db)
SqliteThrottle(sign_in_db(_config))
bind = [str(_config.api_bind)]
workers = 2
worker_class = "gthread"
threads = 4
accesslog = "-"
errorlog = "-"
timeout = 60
# An idle kept-alive connection is closed after this many seconds (gunicorn's default: 2).
# A request a client sends on it at that instant is lost: HTTP/1.1's keep-alive race (RFC 9112
# section 9.3.1), which no server setting removes; well-behaved clients send an idempotent
# request again on a new connection (curl, browsers, Go, and tests/conftest.py's session).
# 30 s puts the boundary past the pauses of scripts and tests (a CLI call, a 15 s scrape
# interval) so that their POSTs, which are not resent, do not meet it; a connection that
# sends nothing is dropped after this long too, so it stays short of nginx's 75 s.
keepalive = 30
# gunicorn's control socket defaults to one path per user (~/.gunicorn): two instances (tests,
# a second deployment) would fight over it, and tmail does not use it.
control_socket_disable = True


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Save the worker's last second of request counts before it goes."""
    tmail = getattr(worker.wsgi, "extensions", {}).get("tmail")
    if tmail is not None:
        tmail.counters.flush()
