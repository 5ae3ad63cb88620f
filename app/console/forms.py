"""What the console's forms share: a FlaskForm is the HTML side only, the API's schemas and
the core's checks are the rules.

A page reads its form into the body the API would get (:func:`body`), loads it with the API's
own schema and calls the same core function; a refusal (marshmallow's ``ValidationError``,
the store's ``UserError`` or ``DirectoryError``) is put back on the form's fields
(:func:`attempt`), to be shown next to them with status 422. The forms' fields are named as
the API's keys (``mailboxQuota``, ``remoteHost``...), so that a schema's messages, keyed by
field, and the core's reasons, written ``"field: reason"``, find their field by name; no
WTForms validator is declared, so that no rule exists twice.

Nothing is done by GET: a delete link leads to the confirmation page (:func:`confirm_page`),
which POSTs ``confirm=yes`` back to the same URL (:func:`confirmed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import render_template, request
from flask_wtf import FlaskForm
from marshmallow import Schema, ValidationError
from marshmallow.validate import OneOf

from app.errors import describe_validation
from tmail.directory.errors import DirectoryError
from tmail.users import UserError

T = TypeVar("T")
REFUSALS = (ValidationError, UserError, DirectoryError)
FORM_ERROR = 422


def body(form: FlaskForm, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The form's values as the API's JSON body: every field but the CSRF token and ``skip``
    (the parts the API takes from its path), empty text left out so that the schema's own
    default applies, as for a key the client does not send."""
    return {name: field.data for name, field in form._fields.items()
            if name != "csrf_token" and name not in skip and field.data not in ("", None)}


def choices(schema: type[Schema], name: str) -> list[tuple[str, str]]:
    """A select's options: the values the schema's ``OneOf`` accepts for ``name``."""
    validators = schema().fields[name].validators
    found = next(v for v in validators if isinstance(v, OneOf))
    return [(str(choice), str(choice)) for choice in found.choices]


def default(schema: type[Schema], name: str) -> Any:
    """What the API uses when ``name`` is not sent (for a field's help text or checkbox)."""
    return schema().fields[name].load_default


def attempt(form: FlaskForm, action: Callable[[], T], *, renames: dict[str, str] | None = None,
            fallbacks: dict[type[Exception], str] | None = None) -> T | None:
    """``action()`` (a schema load and one core call), or ``None`` with its refusal on the
    form's fields: ``renames`` maps a core field name onto the form's (a route's ``domain:``
    is its ``host``); a refusal naming no field goes under the field ``fallbacks`` gives for
    its class (a duplicate login under the login), else on the form as a whole."""
    try:
        return action()
    except REFUSALS as exc:
        fallback = next((name for kind, name in (fallbacks or {}).items()
                         if isinstance(exc, kind)), "")
        place_errors(form, exc, renames or {}, fallback)
        return None


def place_errors(form: FlaskForm, exc: Exception, renames: dict[str, str],
                 fallback: str = "") -> None:
    if isinstance(exc, ValidationError):
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        for key, inner in messages.items():
            _add(form, renames.get(str(key), str(key)), describe_validation(inner), fallback)
        return
    msg, raw = exc.msg, exc.raw  # type: ignore[attr-defined]
    name, sep, reason = raw.partition(": ")
    name = renames.get(name, name)
    if sep and _field(form, name):
        _add(form, name, [reason], fallback)
    else:
        _add(form, "", [f"{msg}: {raw}" if raw else msg], fallback)


def _field(form: FlaskForm, name: str) -> bool:
    return name in form._fields and name != "csrf_token"


def _add(form: FlaskForm, name: str, messages: list[str], fallback: str) -> None:
    if not _field(form, name):
        name = fallback
    if name:
        field = form._fields[name]
        field.errors = [*field.errors, *messages]
    else:
        form.form_errors = [*form.form_errors, *messages]


def has_errors(form: FlaskForm) -> bool:
    return bool(form.form_errors) or any(field.errors for field in form)


def status(form: FlaskForm) -> int:
    """200 for a form to fill in, 422 for one sent back with the reasons it was refused."""
    return FORM_ERROR if has_errors(form) else 200


def confirmed() -> bool:
    """Whether this request is the confirmation page's POST (anything else only shows it)."""
    return request.method == "POST" and request.form.get("confirm") == "yes"


def confirm_page(title: str, question: str, action: str, cancel: str,
                 details: list[str] | None = None, button: str = "Delete") -> str:
    return render_template("console/confirm.html", title=title, question=question,
                           details=details or [], action=action, fields={}, button=button,
                           cancel=cancel, danger=True)
