"""How the console writes the queue's values for people: status names, ages, times."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask

from tmail.queue.record import Status

STATUS_NAMES = {
    Status.IN_DELIVERY: "in delivery",
    Status.SCHEDULED: "scheduled",
    Status.HELD: "held",
    Status.DISCARD: "discarding",
    Status.BOUNCE: "bouncing",
}


def age(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: the two biggest units, as mailq users read."""
    seconds = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts = []
    for name, size in units:
        if seconds >= size or (name == "s" and not parts):
            parts.append(f"{seconds // size}{name}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def moment(value: datetime | None) -> str:
    """A time in UTC to the second, ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def init_app(app: Flask) -> None:
    app.add_template_filter(age, "age")
    app.add_template_filter(moment, "moment")
    app.add_template_global(STATUS_NAMES, "STATUS_NAMES")
