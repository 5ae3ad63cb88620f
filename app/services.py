"""The stores the API works with, built once by the factory and reached through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from app.throttle import SignInThrottle, SqliteThrottle
from tmail.config import Config
from tmail.metrics import Counters
from tmail.queue import QueueStore
from tmail.queue.ops import QueueOps
from tmail.users import UserStore, open_store


@dataclass(frozen=True)
class Services:
    config: Config
    users: UserStore
    queue: QueueStore
    queue_ops: QueueOps
    counters: Counters
    throttle: SignInThrottle

    @classmethod
    def build(cls, config: Config) -> Services:
        queue = QueueStore(config.queue_dir, id_block=16)
        counters = Counters(config.metrics_db)
        return cls(
            config=config,
            users=open_store(config),
            queue=queue,
            queue_ops=QueueOps(queue, config.hostname, counters),
            counters=counters,
            throttle=SqliteThrottle(sign_in_db(config)),
        )


def sign_in_db(config: Config) -> Path:
    """Failed sign-ins per client IP, shared by the API's workers (:mod:`app.throttle`)."""
    return config.data_dir / "sign-in.db"


def services() -> Services:
    return current_app.extensions["tmail"]
