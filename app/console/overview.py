"""The overview page: where the queue stands (records by status, the oldest record's age)."""

from __future__ import annotations

from flask import render_template

from app.console import bp
from app.console.format import STATUS_NAMES
from app.services import services
from tmail.queue.summary import summarize


@bp.get("/")
def overview() -> str:
    summary = summarize(services().queue)
    by_status = [(name, summary.by_status.get(status, 0))
                 for status, name in STATUS_NAMES.items()]
    return render_template("console/overview.html", summary=summary, by_status=by_status)
