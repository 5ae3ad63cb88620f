"""The Message page: one record (all its fields), its message's header block, a download
of the raw message, and the record's actions (posted to the Queue page's action, so that
discard and bounce ask for a confirmation there too)."""

from __future__ import annotations

from flask import Response, render_template, url_for

from app.console import bp
from app.errors import ApiError
from app.services import services
from tmail.message import split_headers
from tmail.queue import Status


def _not_found(record_id: int) -> ApiError:
    return ApiError(404, "no such message ID", f"{record_id} is not in the queue (delivered, "
                    "discarded or bounced, or never queued).")


@bp.get("/queue/<int:record_id>")
def message(record_id: int) -> str:
    tmail = services()
    record = tmail.queue.get(record_id)
    raw = tmail.queue.read_raw(record_id) if record else None
    if record is None or raw is None:
        raise _not_found(record_id)
    # The header block as ``GET /queue/ID/raw?headers=1`` gives it; bytes that are not
    # UTF-8 (8-bit headers) are shown as U+FFFD, never guessed.
    headers = split_headers(raw)[0].decode("utf-8", errors="replace")
    actions = [action for action, applies in (
        ("hold", record.status in (Status.SCHEDULED, Status.IN_DELIVERY)),
        ("release", record.status == Status.HELD),
        ("retry", record.status == Status.SCHEDULED),
    ) if applies]
    return render_template("console/message.html", record=record, fields=record.to_json(),
                           headers=headers, actions=actions,
                           here=url_for("console.message", record_id=record_id),
                           queue_url=url_for("console.queue"))


@bp.get("/queue/<int:record_id>/raw")
def message_raw(record_id: int) -> Response:
    """The queued message as it is on disk (``message/rfc822``), as a file to save."""
    data = services().queue.read_raw(record_id)
    if data is None:
        raise _not_found(record_id)
    return Response(data, mimetype="message/rfc822", headers={
        "Content-Disposition": f'attachment; filename="{record_id}.eml"'})
