"""The Queue page: the records newest first or by next attempt, filtered as ``GET /queue``
filters them, a page at a time by cursor; actions on the rows selected, or on everything
the filter matches after a confirmation that says how many records that is.

The filters are the API's (:class:`app.schemas.QueueFilterSchema`, :func:`app.parsing.
record_filter`): same names, same meaning, same errors, shown next to their fields (422).
The actions are the API's too: :class:`tmail.queue.ops.QueueOps` one record at a time, as
``_single`` of :mod:`app.queue` calls it, or ``bulk`` with the same refusal of an empty
filter (unless "all records" is ticked, the API's ``all=true``).

Paging is by cursor, never by offset, so that a page costs the same at any depth and a
record queued or removed meanwhile shifts nothing: newest first, the page after carries the
last ``Id`` shown (``before``) and reads only the leaf directories below it
(:meth:`QueueStore.iter_raw_records_descending`); by next attempt, it carries the last
row's (``NextDeliveryScheduledAt``, ``Id``), the order's key (``due``, ``after``).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, flash, make_response, redirect, render_template, request, url_for
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.console import bp
from app.console.format import STATUS_NAMES
from app.console.security import safe_next
from app.parsing import record_filter
from app.schemas import BulkSchema, QueueFilterSchema
from app.services import services
from tmail.queue import Record, RecordFilter, Status
from tmail.queue.layout import MAX_ID
from tmail.queue.ops import BULK_ACTIONS, Outcome
from tmail.queue.record import format_time, parse_time
from tmail.queue.store import QueueStore

PAGE_SIZES = (50, 100, 200)
ORDERS = {"new": "Newest first", "next": "By next attempt"}
FILTERS = ("status", "host", "rcpt", "from", "older_than")  # the query's names (data keys)
DONE = {"hold": "held", "release": "released", "retry": "retried (due now)",
        "discard": "discarded", "bounce": "bounced"}
CONFIRMED = ("discard", "bounce")  # what cannot be undone asks first
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class QueuePageSchema(QueueFilterSchema):
    """The page's query string: the API's filters, then the order, the page size and the
    cursor of the order (``before`` newest first; ``due`` and ``after`` by next attempt)."""

    order = fields.String(load_default="new", validate=validate.OneOf(list(ORDERS)))
    limit = fields.Integer(load_default=PAGE_SIZES[0], validate=validate.OneOf(PAGE_SIZES))
    before = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    after = fields.Integer(validate=validate.Range(min=0, max=MAX_ID))
    due = fields.AwareDateTime(default_timezone=UTC)

    @validates_schema
    def cursor(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("after" in data) != ("due" in data):
            raise ValidationError("the page after a row needs both due and after.", "after")


class BulkFormSchema(BulkSchema):
    """The bulk form: the API's bulk parameters (filters and ``all``) and the action."""

    action = fields.String(required=True, validate=validate.OneOf(BULK_ACTIONS))


class RowActionSchema(Schema):
    """The rows' form: an action and the Ids of the rows ticked."""

    class Meta:
        unknown = RAISE

    action = fields.String(required=True, validate=validate.OneOf(BULK_ACTIONS))
    id = fields.List(fields.Integer(validate=validate.Range(min=1, max=MAX_ID)),
                     load_default=list)


@dataclass(frozen=True)
class Page:
    rows: list[Record]
    cursor: dict[str, str] | None  # the query of the next page's cursor; None on the last


def submitted(source: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The fields of a form that were filled in, trimmed: an empty field means "any"."""
    return {name: source[name].strip() for name in names if source.get(name, "").strip()}


def due_key(data: dict[str, Any]) -> tuple[int, int]:
    """A record's place by next attempt: its due time in whole microseconds (exact, unlike
    a float), then its ``Id``; no due time sorts first (it is due)."""
    due = parse_time(data["NextDeliveryScheduledAt"])
    return (0 if due is None else (due - EPOCH) // timedelta(microseconds=1)), data["Id"]


def newest_first(store: QueueStore, selection: RecordFilter, before: int, limit: int) -> Page:
    """Records below ``before`` newest first: only the leaves the page reaches are read (a
    filter reads on until the page is full, or to the end of the queue)."""
    found = list(itertools.islice(
        store.iter_raw_records_descending(selection, before=before), limit + 1))
    rows = [Record.from_json(data) for data, _ in found[:limit]]
    more = len(found) > limit
    return Page(rows, {"before": str(rows[-1].id)} if more else None)


def by_next_attempt(store: QueueStore, selection: RecordFilter,
                    after: tuple[int, int] | None, limit: int) -> Page:
    """Records due soonest after the cursor's key. A FULL SCAN of the matching records: the
    tree is in ``Id`` order, not in due order. One pass, and ``heapq.nsmallest`` keeps only
    ``limit + 1`` of them, so memory stays bounded by the page size, not the queue's."""
    keyed = ((due_key(data), data) for data, _ in store.iter_raw_records(selection))
    if after is not None:
        keyed = (item for item in keyed if item[0] > after)
    found = heapq.nsmallest(limit + 1, keyed, key=lambda item: item[0])
    rows = [Record.from_json(data) for _, data in found[:limit]]
    if len(found) <= limit:
        return Page(rows, None)
    micros, last_id = found[limit - 1][0]
    due = EPOCH + timedelta(microseconds=micros)
    return Page(rows, {"due": format_time(due), "after": str(last_id)})


def _page(params: dict[str, Any]) -> Page:
    store, selection = services().queue, record_filter(params)
    if params["order"] == "next":
        after = None
        if "after" in params:
            after = ((params["due"] - EPOCH) // timedelta(microseconds=1), params["after"])
        return by_next_attempt(store, selection, after, params["limit"])
    return newest_first(store, selection, params.get("before", 0), params["limit"])


def _render(values: dict[str, str], *, bulk: dict[str, str] | None = None,
            bulk_errors: dict[str, Any] | None = None, status: int = 200) -> Response:
    """The page for the query ``values`` (by their query names); the filter's errors next
    to its fields (422) instead of rows when it does not validate."""
    errors: dict[str, Any] = {}
    page = None
    try:
        params = QueuePageSchema().load(values)
    except ValidationError as exc:
        errors, status = exc.messages_dict, 422  # type: ignore[assignment]
    else:
        page = _page(params)
    filters = {name: values[name] for name in FILTERS if name in values and not errors}
    view = {"order": values.get("order", "new"), "limit": values.get("limit", str(PAGE_SIZES[0]))}
    next_url = url_for("console.queue", **filters, **view, **page.cursor) if (
        page and page.cursor) else None
    body = render_template(
        "console/queue.html", values=values, errors=errors, page=page, filters=filters,
        next_url=next_url, orders=ORDERS, page_sizes=PAGE_SIZES, statuses=STATUS_NAMES,
        actions=BULK_ACTIONS, bulk=bulk or {}, bulk_errors=bulk_errors or {},
        here=request.full_path.rstrip("?") if request.method == "GET" else url_for(
            "console.queue", **filters, **view))
    return make_response(body, status)


@bp.get("/queue")
def queue() -> Response:
    known = (*FILTERS, "order", "limit", "before", "after", "due")
    values = submitted(request.args, known)
    values.update({name: value for name, value in request.args.items()
                   if name not in known})  # refused as unknown, as the API refuses them
    return _render(values)


def describe(outcomes: Iterable[tuple[int, Outcome]], action: str) -> tuple[str, str]:
    """A flash message for the rows' outcomes: ``3 held, 1 skipped (status held)``."""
    done = marked = missing = 0
    skipped: Counter[str] = Counter()
    for record_id, outcome in outcomes:
        if outcome is Outcome.DONE:
            done += 1
        elif outcome is Outcome.MARKED:
            marked += 1
        elif outcome is Outcome.NOT_FOUND:
            missing += 1
        else:
            record = services().queue.get(record_id)
            skipped[STATUS_NAMES[record.status] if record else "gone"] += 1
    parts = [f"{done} {DONE[action]}"] if done or not (marked or skipped or missing) else []
    if marked:
        parts.append(f"{marked} marked ({DONE[action].split()[0]} when the delivery attempt "
                     "in progress ends)")
    parts += [f"{count} skipped (status {name})" for name, count in sorted(skipped.items())]
    if missing:
        parts.append(f"{missing} not found (gone meanwhile)")
    return ", ".join(parts), "success" if done or marked else "warning"


@bp.post("/queue/act")
def queue_act() -> Response:
    """The selected rows (``id`` values) with one action; discard and bounce confirm first."""
    params = RowActionSchema().load({"action": request.form.get("action", ""),
                                     "id": request.form.getlist("id")})
    action, ids = params["action"], list(dict.fromkeys(params["id"]))
    back = safe_next(request.form.get("next")) if request.form.get("next") else url_for(
        "console.queue")
    if not ids:
        flash("Select at least one message first.", "warning")
        return redirect(back, 303)
    if action in CONFIRMED and request.form.get("confirm") != "yes":
        return make_response(render_template(
            "console/confirm.html", title=f"{action.capitalize()} messages",
            question=f"{action.capitalize()} {len(ids)} selected "
                     f"message{'s' if len(ids) != 1 else ''}? This cannot be undone.",
            details=[f"Id {record_id}" for record_id in ids[:20]]
            + ([f"and {len(ids) - 20} more"] if len(ids) > 20 else []),
            action=url_for("console.queue_act"), fields={"action": action, "id": ids, "next": back},
            button=f"{action.capitalize()} {len(ids)}", cancel=back, danger=True))
    operation = getattr(services().queue_ops, action)
    message, category = describe(((record_id, operation(record_id)) for record_id in ids),
                                 action)
    flash(message, category)
    return redirect(back, 303)


def _filter_words(values: dict[str, str]) -> str:
    labels = {"status": "status", "host": "host", "rcpt": "recipient", "from": "sender",
              "older_than": "older than (seconds)"}
    words = []
    for name in FILTERS:
        if name in values:
            shown = STATUS_NAMES[Status(int(values[name]))] if name == "status" else values[name]
            words.append(f"{labels[name]} {shown}")
    return ", ".join(words) or "none: every record"


@bp.post("/queue/bulk")
def queue_bulk() -> Response:
    """An action on everything the filter matches: a confirmation page with the count of
    records matching now, then (``confirm=yes``) the API's bulk operation."""
    values = submitted(request.form, (*FILTERS, "all", "action"))
    try:
        params = BulkFormSchema().load(values)
    except ValidationError as exc:
        return _render(submitted(request.form, FILTERS), bulk=values,
                       bulk_errors=exc.messages_dict, status=422)
    selection = record_filter(params)
    filters = {name: values[name] for name in FILTERS if name in values}
    if selection.is_empty and not params["all"]:
        return _render(filters, bulk=values, status=422, bulk_errors={
            "all": ["No filter: tick \"all records\" to act on the whole queue."]})
    action, back = params["action"], url_for("console.queue", **filters)
    if request.form.get("confirm") != "yes":
        count = sum(1 for _ in services().queue.iter_raw_records(selection))
        return make_response(render_template(
            "console/confirm.html", title=f"{action.capitalize()} by filter",
            question=f"{action.capitalize()} the {count} record{'s' if count != 1 else ''} "
                     "that match the filter now?",
            details=[f"Filter: {_filter_words(filters)}",
                     "The count is of now: the action applies to the records that match "
                     "when you confirm."],
            action=url_for("console.queue_bulk"), fields=values, button=f"{action.capitalize()} "
            f"{count}", cancel=back, danger=action in CONFIRMED))
    result = services().queue_ops.bulk(action, selection)
    flash(f"Bulk {action}: {result.matched} matched, {result.done} {DONE[action]}, "
          f"{result.skipped} skipped.", "success" if result.done else "warning")
    return redirect(back, 303)
