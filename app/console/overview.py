"""The overview page: where the queue stands and what the runner did lately.

Records by status and the oldest record's age, the qshape table of ``GET /queue/summary``
(the same :func:`tmail.queue.summary.summarize`, one pass over the queue) as a heat map, and
a chart of deliveries sent, deferred and bounced from the per-minute series the runner's
counters keep in ``metrics.db`` (:mod:`tmail.metrics`) over the last 1, 6 or 24 hours
(``?hours=``, 6 by default).
"""

from __future__ import annotations

import time

from flask import current_app, render_template
from marshmallow import EXCLUDE, Schema, fields, validate

from app.console import bp
from app.console.charts import WINDOWS, SeriesStyle, heat_map, line_chart
from app.console.format import STATUS_NAMES
from app.parsing import load_query
from app.services import services
from tmail.metrics import DELIVERIES
from tmail.queue.summary import summarize

HEAT_MAP_DOMAINS = 20  # as /metrics' tmail_queue_records_by_domain
DEFAULT_HOURS = 6
# The runner's results (RecipientResult.outcome), each with its colour class and dashes.
DELIVERY_SERIES = (
    SeriesStyle("sent", "sent", "sent"),
    SeriesStyle("deferred", "deferred", "deferred", "7 4"),
    SeriesStyle("bounced", "bounced", "bounced", "2 3"),
)


class OverviewQuery(Schema):
    class Meta:
        unknown = EXCLUDE  # a page's URL may carry anything (a ``next`` came back with it)

    hours = fields.Integer(load_default=DEFAULT_HOURS, validate=validate.OneOf(sorted(WINDOWS)))


@bp.get("/")
def overview() -> str:
    window = WINDOWS[load_query(OverviewQuery())["hours"]]
    tmail = services()
    summary = summarize(tmail.queue)
    by_status = [(int(status), name, summary.by_status.get(status, 0))
                 for status, name in STATUS_NAMES.items()]
    now_minute = int(time.time() // 60)
    series = tmail.counters.per_minute(DELIVERIES, now_minute - window.hours * 60)
    chart = line_chart("Deliveries", {labels[0]: minutes for labels, minutes in series.items()},
                       DELIVERY_SERIES, window, now_minute)
    return render_template("console/overview.html", summary=summary, by_status=by_status,
                           heat=heat_map(summary, HEAT_MAP_DOMAINS), chart=chart,
                           window=window, windows=sorted(WINDOWS),
                           # the Queue page, filtered, once it exists (as the navigation bar)
                           queue_links="console.queue" in current_app.view_functions)
