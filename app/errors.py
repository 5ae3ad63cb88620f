"""The one place where errors become tmail's JSON body ``{"msg": ..., "raw": ...}``.

Handlers never catch exceptions themselves: validation errors, domain errors, HTTP errors
and anything unexpected all end here, with the right status and the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, has_request_context, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from tmail.db import DatabaseUnavailable
from tmail.directory.errors import DirectoryError
from tmail.users import UserError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a handler raises on purpose: status, message and detail."""

    def __init__(self, status: int, msg: str, raw: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status, self.msg, self.raw = status, msg, raw
        self.headers = headers or {}


# path prefix -> renderer of an error as a page: the web console's, which registers itself.
# Errors of the API (every other path) keep tmail's JSON body.
ErrorPage = Callable[[int, str, str], Response]
ERROR_PAGES: dict[str, ErrorPage] = {}


def error_response(status: int, msg: str, raw: str = "",
                   headers: dict[str, str] | None = None) -> Response:
    page = next((render for prefix, render in ERROR_PAGES.items()
                 if has_request_context() and request.path.startswith(prefix)), None)
    response = page(status, msg, raw) if page else jsonify({"msg": msg, "raw": raw})
    response.status_code = status
    response.headers.update(headers or {})
    if status == 401 and page is None:
        response.headers["WWW-Authenticate"] = 'Basic realm="tmail"'
    return response


def describe_validation(messages: object, prefix: str = "") -> list[str]:
    """Flatten marshmallow's nested messages into "field: reason" strings."""
    if isinstance(messages, dict):
        parts = []
        for field, inner in messages.items():
            name = field if field != "_schema" else ""
            label = f"{prefix}.{name}" if prefix and name else prefix or name
            parts.extend(describe_validation(inner, label))
        return parts
    if isinstance(messages, list):
        return [f"{prefix}: {m}" if prefix else str(m) for m in messages
                if not isinstance(m, dict | list)] + [
            part for m in messages if isinstance(m, dict | list)
            for part in describe_validation(m, prefix)
        ]
    return [f"{prefix}: {messages}" if prefix else str(messages)]


DRAIN_LIMIT = 16 * 1024 * 1024
RETRY_AFTER = 5  # seconds, in a 503


def _drain_body() -> None:
    """Read (and drop) a too-big body before answering 413.

    A server that answers and closes while the client is still sending makes the client see
    a reset or a TLS EOF instead of the 413 and its reason. Bodies past DRAIN_LIMIT are not
    worth reading: those clients get the reset.
    """
    length = request.content_length or 0
    if length > DRAIN_LIMIT:
        return
    stream = request.environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 65536))
        if not chunk:
            break
        length -= len(chunk)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.msg, exc.raw, exc.headers)

    @app.errorhandler(ValidationError)
    def validation_error(exc: ValidationError) -> Response:
        reasons = (reason.rstrip(".") for reason in describe_validation(exc.messages))
        return error_response(422, "invalid input", "; ".join(reasons))

    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(exc: DatabaseUnavailable) -> Response:
        """Temporary by nature (the pool reconnects once the server is back): 503 with a
        Retry-After, never a 500, so that clients and load balancers retry."""
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(503, "database unavailable", str(exc),
                              {"Retry-After": str(RETRY_AFTER)})

    @app.errorhandler(UserError)
    def user_error(exc: UserError) -> Response:
        return error_response(422, exc.msg, exc.raw)

    @app.errorhandler(DirectoryError)
    def directory_error(exc: DirectoryError) -> Response:
        return error_response(exc.status, exc.msg, exc.raw)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            _drain_body()
        response = error_response(status, (exc.name or "error").lower(), exc.description or "")
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(500, "internal server error", "see the server log")
