"""Marshmallow schemas: what the API accepts, validated before any store is touched.

Schemas are pure (no database): uniqueness is the store's job, raised as a domain error.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from tmail.queue import Status
from tmail.queue.layout import MAX_ID
from tmail.quota import parse_quota

MAX_COUNT = MAX_ID  # limits and offsets: far beyond any queue, within a C ssize_t


class StrictBoolean(fields.Boolean):
    """JSON ``true``/``false`` only: ``"yes"`` or ``1`` is an error, not a guess."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean (use true or false).")
        return value


def _password_bytes(value: str) -> None:
    """bcrypt reads at most 72 bytes and stops at NUL: refuse what it would silently cut."""
    size = len(value.encode("utf-8"))
    if size > 72:
        raise ValidationError(f"must be at most 72 bytes long in UTF-8 (got {size}).")
    if "\x00" in value:
        raise ValidationError("must not contain NUL.")


# The length in characters is what the OpenAPI document can say; the bytes rule is bcrypt's.
_PASSWORD = [validate.Length(min=6, max=72), _password_bytes]


def _quota(value: str) -> None:
    try:
        parse_quota(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class UserCreateSchema(Schema):
    """Body of ``POST /users/LOGIN``. The login itself comes from the path and is checked by
    the store (:func:`tmail.users.check_login`), the one check the CLI gets too."""

    class Meta:
        unknown = RAISE

    passwd = fields.String(required=True, validate=_PASSWORD)
    authRelay = StrictBoolean(load_default=False)
    haveMailbox = StrictBoolean(load_default=False)
    mailboxQuota = fields.String(load_default=None, validate=_quota)
    isCatchall = StrictBoolean(load_default=False)

    @validates_schema(skip_on_field_errors=False)
    def check(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("isCatchall") and not data.get("haveMailbox"):
            raise ValidationError("a catchall needs a mailbox (haveMailbox: true).",
                                  "isCatchall")


class UserPasswordSchema(Schema):
    """Body of ``PUT /users/LOGIN``."""

    class Meta:
        unknown = RAISE

    passwd = fields.String(required=True, validate=_PASSWORD)


class UserSchema(Schema):
    """A user as tmail shows it (the seed's keys and types), plus ``IsCatchall``."""

    Id = fields.Integer(attribute="id")
    Login = fields.String(attribute="login")
    Passwd = fields.String(attribute="passwd")
    DovePasswd = fields.String(attribute="dove_passwd")
    Active = fields.String(attribute="active")
    AuthRelay = fields.Boolean(attribute="auth_relay")
    HaveMailbox = fields.Boolean(attribute="have_mailbox")
    MailboxQuota = fields.String(attribute="mailbox_quota")
    Home = fields.String(attribute="home")
    IsCatchall = fields.Boolean(attribute="is_catchall")


class QueueFilterSchema(Schema):
    """Query string filters shared by ``GET /queue`` and the bulk operations."""

    class Meta:
        unknown = RAISE

    status = fields.Integer(validate=validate.OneOf([int(s) for s in Status]))
    host = fields.String(validate=validate.Length(min=1))
    rcpt = fields.String(validate=validate.Length(min=1))
    mail_from = fields.String(data_key="from")
    older_than = fields.Float(validate=validate.Range(min=0))


class QueueListSchema(QueueFilterSchema):
    limit = fields.Integer(validate=validate.Range(min=1, max=MAX_COUNT))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_COUNT))
    after = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_COUNT))


class SummarySchema(Schema):
    class Meta:
        unknown = RAISE

    top = fields.Integer(validate=validate.Range(min=1))


class BulkSchema(QueueFilterSchema):
    all = fields.Boolean(load_default=False)


class QueueRecordSchema(Schema):
    """A queue record: tmail's twelve keys, then tmail-py's extensions."""

    Id = fields.Integer(required=True)
    Uuid = fields.String(required=True)
    Key = fields.String(required=True)
    MailFrom = fields.String(required=True)
    AuthUser = fields.String(required=True)
    RcptTo = fields.String(required=True)
    MessageId = fields.String(required=True)
    Host = fields.String(required=True)
    AddedAt = fields.String(required=True)
    NextDeliveryScheduledAt = fields.String(required=True)
    Status = fields.Integer(required=True)
    DeliveryFailedCount = fields.Integer(required=True)
    Size = fields.Integer()
    ClientAddr = fields.String()
    LastError = fields.String()
    LastAttemptAt = fields.String()
    DelayWarned = fields.Boolean()
    Node = fields.String(metadata={"description": "the node (TMAIL_NODE) that queued it "
                                   "(absent from records written before nodes)"})


class BulkResultSchema(Schema):
    matched = fields.Integer(required=True)
    done = fields.Integer(required=True)
    skipped = fields.Integer(required=True)


class ErrorSchema(Schema):
    """tmail's one error body (and the body of a few plain confirmations)."""

    msg = fields.String(required=True)
    raw = fields.String(required=True)


class DomainBucketsSchema(Schema):
    host = fields.String(required=True)
    count = fields.Integer(required=True)
    buckets = fields.List(fields.Integer(), required=True)


class TotalBucketsSchema(Schema):
    count = fields.Integer(required=True)
    buckets = fields.List(fields.Integer(), required=True)


class SummaryResultSchema(Schema):
    """``GET /queue/summary``: qshape's age buckets, biggest domains first."""

    buckets = fields.List(fields.String(), required=True)
    total = fields.Nested(TotalBucketsSchema, required=True)
    domains = fields.List(fields.Nested(DomainBucketsSchema), required=True)
    status = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    oldest_age_seconds = fields.Float(required=True)


class RawQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    headers = fields.String(validate=validate.OneOf(["0", "1", "true", "false"]))
