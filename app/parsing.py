"""Turning a request into validated data: JSON bodies (422 on bad fields) and query strings
(400 on unknown or bad parameters, as a listing has no entity to be "unprocessable")."""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from marshmallow import Schema, ValidationError

from app.errors import ApiError, describe_validation
from tmail.queue import RecordFilter, Status


def json_body() -> dict[str, Any]:
    """The request's JSON object; 400 when it is not JSON or not an object.

    Parsed with orjson, not Flask's ``get_json``: the standard parser recurses once per
    nesting level (``[[[...]]]`` 100,000 deep raised ``RecursionError``, a 500) and accepts
    lone surrogates (``"\\ud800"``) that break later when stored. orjson refuses both, and
    anything else that is not JSON in UTF-8, with one ``JSONDecodeError``.
    """
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed JSON", f"the body must be a JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed JSON", f"expected a JSON object, got {type(body).__name__}")
    return body


def load_body(schema: Schema) -> dict[str, Any]:
    return schema.load(json_body())


def load_query(schema: Schema) -> dict[str, Any]:
    try:
        return schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(400, "bad query parameter",
                       "; ".join(describe_validation(exc.messages))) from None


def record_filter(params: dict[str, Any]) -> RecordFilter:
    mail_from = params.get("mail_from")
    return RecordFilter(
        status=Status(params["status"]) if "status" in params else None,
        host=params.get("host"),
        rcpt=params.get("rcpt"),
        mail_from="" if mail_from == "<>" else mail_from,
        older_than=params.get("older_than"),
    )
