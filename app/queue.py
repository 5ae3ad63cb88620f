"""``/queue``: tmail's queue endpoints (list, show, discard, bounce), then the admin
operations mail admins expect (hold, release, retry, bulk actions, raw view)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify

from app.auth import auth
from app.errors import ApiError
from app.parsing import load_query, record_filter
from app.schemas import BulkSchema, QueueListSchema, RawQuerySchema, SummarySchema
from app.services import services
from tmail.message import split_headers
from tmail.queue.ops import BULK_ACTIONS, Outcome
from tmail.queue.summary import summarize

bp = Blueprint("queue", __name__)
JSON_MIMETYPE = "application/json; charset=UTF-8"


@bp.get("/queue")
@auth.login_required
def list_queue() -> Response:
    """A JSON array streamed record by record: memory stays flat with a big queue."""
    params = load_query(QueueListSchema())
    records = services().queue.iter_raw_records(record_filter(params), after=params["after"])
    stop = params["offset"] + params["limit"] if "limit" in params else None
    page = itertools.islice(records, params["offset"], stop)

    def generate() -> Iterator[bytes]:
        # The record files are JSON objects already: stream them as they are, in batches.
        yield b"["
        chunk: list[bytes] = []
        for n, (_, data) in enumerate(page):
            chunk.append(data if n == 0 else b"," + data)
            if len(chunk) == 256:
                yield b"".join(chunk)
                chunk.clear()
        yield b"".join(chunk) + b"]"

    return Response(generate(), mimetype=JSON_MIMETYPE)


@bp.get("/queue/summary")
@auth.login_required
def summary() -> Response:
    """Counts by destination domain x age bucket (qshape), totals by status, oldest age."""
    params = load_query(SummarySchema())
    return jsonify(summarize(services().queue).to_json(params.get("top")))


def _record_or_404(record_id: int) -> Response:
    record = services().queue.get(record_id)
    if record is None:
        raise ApiError(404, "no such message ID", str(record_id))
    return jsonify(record.to_json())


@bp.get("/queue/<int:record_id>")
@auth.login_required
def show(record_id: int) -> Response:
    return _record_or_404(record_id)


@bp.get("/queue/<int:record_id>/raw")
@auth.login_required
def raw(record_id: int) -> Response:
    """The queued message as ``message/rfc822`` (what ``postcat`` shows); ``?headers=1`` for
    the header block only."""
    params = load_query(RawQuerySchema())
    data = services().queue.read_raw(record_id)
    if data is None:
        raise ApiError(404, "no such message ID", str(record_id))
    if params.get("headers") in ("1", "true"):
        data = split_headers(data)[0]
    return Response(data, mimetype="message/rfc822")


_DONE_MESSAGES = {
    "discard": "message discarded",
    "bounce": "message bounced",
}


def _single(action: str, record_id: int) -> Response:
    outcome = getattr(services().queue_ops, action)(record_id)
    if outcome is Outcome.NOT_FOUND:
        raise ApiError(404, "no such message ID", str(record_id))
    if outcome is Outcome.NOT_APPLICABLE:
        record = services().queue.get(record_id)
        status = record.status if record else "gone"
        raise ApiError(409, f"cannot {action} this message", f"its status is {status}")
    if action in _DONE_MESSAGES:
        raw = "delivery in progress: done when the attempt ends" if (
            outcome is Outcome.MARKED) else ""
        return jsonify({"msg": _DONE_MESSAGES[action], "raw": raw})
    return _record_or_404(record_id)


@bp.delete("/queue/discard/<int:record_id>")
@auth.login_required
def discard(record_id: int) -> Response:
    return _single("discard", record_id)


@bp.delete("/queue/bounce/<int:record_id>")
@auth.login_required
def bounce(record_id: int) -> Response:
    return _single("bounce", record_id)


@bp.post("/queue/<any(hold, release, retry):action>/<int:record_id>")
@auth.login_required
def change(action: str, record_id: int) -> Response:
    return _single(action, record_id)


def _bulk(action: str) -> Response:
    params = load_query(BulkSchema())
    selection = record_filter(params)
    if selection.is_empty and not params["all"]:
        raise ApiError(400, "refusing a bulk action without a filter",
                       "give status, host, rcpt, from or older_than, or all=true")
    assert action in BULK_ACTIONS
    result = services().queue_ops.bulk(action, selection)
    return jsonify({"matched": result.matched, "done": result.done, "skipped": result.skipped})


@bp.post("/queue/<any(hold, release, retry):action>")
@auth.login_required
def bulk_change(action: str) -> Response:
    return _bulk(action)


@bp.delete("/queue/<any(discard, bounce):action>")
@auth.login_required
def bulk_remove(action: str) -> Response:
    return _bulk(action)
