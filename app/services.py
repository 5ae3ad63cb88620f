"""The stores the API works with, built once by the factory and reached through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from tmail.config import Config
from tmail.metrics import Counters
from tmail.queue import QueueStore
from tmail.queue.ops import QueueOps
from tmail.users import UserStore


@dataclass(frozen=True)
class Services:
    config: Config
    users: UserStore
    queue: QueueStore
    queue_ops: QueueOps
    counters: Counters

    @classmethod
    def build(cls, config: Config) -> Services:
        queue = QueueStore(config.queue_dir, id_block=16)
        counters = Counters(config.metrics_db)
        return cls(
            config=config,
            users=UserStore(config.users_db, config.mailboxes_dir, config.default_quota),
            queue=queue,
            queue_ops=QueueOps(queue, config.hostname, counters),
            counters=counters,
        )


def services() -> Services:
    return current_app.extensions["tmail"]
