"""Marshmallow schemas: what the API accepts, validated before any store is touched.

Schemas are pure (no database): uniqueness is the store's job, raised as a domain error.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from tmail.dkim.keys import MAX_SELECTOR, SELECTOR_PATTERN
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
    OrigRcpt = fields.String(metadata={"description": "The address the client gave, before "
                                                      "alias expansion."})
    Transport = fields.String(validate=validate.OneOf(["pipe"]),
                              metadata={"description": "Only for a pipe target."})
    Pipe = fields.String(metadata={"description": "The command of a pipe target."})


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


# --- the directory: domains, aliases, relay networks, routes --------------------------------
# Shapes and types here; what a value means (a domain, an address, a CIDR, a command) is
# checked by tmail.directory, the one check the CLI gets too (422 with the field's name).


class DomainCreateSchema(Schema):
    """Body of ``POST /domains/NAME``: ``local`` true, we deliver into mailboxes; false, we
    accept the domain's mail from anyone and relay it (a backup MX)."""

    class Meta:
        unknown = RAISE

    local = StrictBoolean(load_default=True)


class DomainSchema(Schema):
    Id = fields.Integer(attribute="id", required=True)
    Name = fields.String(attribute="name", required=True)
    Local = fields.Boolean(attribute="local", required=True)


class AliasBodySchema(Schema):
    """Body of ``POST|PUT /aliases/ADDRESS`` (PUT replaces every field)."""

    class Meta:
        unknown = RAISE

    deliverTo = fields.List(fields.String(validate=validate.Length(min=1, max=320)),
                            load_default=list, validate=validate.Length(max=1000))
    pipe = fields.String(load_default="", validate=validate.Length(max=1000))
    miniList = StrictBoolean(load_default=False)

    @validates_schema(skip_on_field_errors=True)
    def check(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("deliverTo") and not data.get("pipe"):
            raise ValidationError("an alias needs at least one of deliverTo and pipe.",
                                  "deliverTo")


class AliasSchema(Schema):
    Id = fields.Integer(attribute="id", required=True)
    Address = fields.String(attribute="address", required=True)
    Local = fields.String(attribute="local", required=True)
    Domain = fields.String(attribute="domain", required=True)
    DeliverTo = fields.List(fields.String(), attribute="deliver_to", required=True)
    Pipe = fields.String(attribute="pipe", required=True)
    MiniList = fields.Boolean(attribute="mini_list", required=True)


class RelayNetworkCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    network = fields.String(required=True, validate=validate.Length(min=1, max=64))


class RelayNetworkSchema(Schema):
    Id = fields.Integer(attribute="id", required=True)
    Network = fields.String(attribute="network", required=True)


class RouteCreateSchema(Schema):
    """Body of ``POST /routes``. ``authPassword`` is write-only: no response carries it."""

    class Meta:
        unknown = RAISE

    host = fields.String(required=True, validate=validate.Length(min=1, max=255))
    remoteHost = fields.String(required=True, validate=validate.Length(min=1, max=255))
    remotePort = fields.Integer(load_default=25, validate=validate.Range(min=1, max=65535))
    priority = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))
    starttls = fields.String(load_default="may",
                             validate=validate.OneOf(["may", "encrypt", "none"]))
    mailFrom = fields.String(load_default=None, validate=validate.Length(min=1, max=320))
    authUser = fields.String(load_default=None, validate=validate.Length(min=1, max=320))
    authLogin = fields.String(load_default=None, validate=validate.Length(min=1, max=320))
    authPassword = fields.String(load_default=None, load_only=True,
                                 validate=validate.Length(min=1, max=512))
    allowPlaintextAuth = StrictBoolean(load_default=False)


class RouteSchema(Schema):
    """A route as the API shows it: never its password. ``Bootstrap`` routes come from
    ``TMAIL_ROUTES`` (``Id`` null, read-only)."""

    Id = fields.Integer(attribute="id", allow_none=True, required=True)
    Host = fields.String(attribute="host", required=True)
    MailFrom = fields.String(attribute="mail_from", allow_none=True, required=True)
    AuthUser = fields.String(attribute="auth_user", allow_none=True, required=True)
    RemoteHost = fields.String(attribute="remote_host", required=True)
    RemotePort = fields.Integer(attribute="remote_port", required=True)
    Priority = fields.Integer(attribute="priority", required=True)
    Starttls = fields.String(attribute="starttls", required=True)
    AuthLogin = fields.String(attribute="auth_login", allow_none=True, required=True)
    AllowPlaintextAuth = fields.Boolean(attribute="allow_plaintext_auth", required=True)
    Bootstrap = fields.Function(lambda route: route.id is None, required=True,
                                metadata={"type": "boolean"})


# --- DKIM keys: never a private key, in a body, a response or an example -----------------------


class DkimCreateSchema(Schema):
    """Body of ``POST /dkim/DOMAIN`` (may be empty): RSA 2048 and a dated selector unless
    said otherwise."""

    class Meta:
        unknown = RAISE

    algorithm = fields.String(load_default="rsa", validate=validate.OneOf(["rsa", "ed25519"]))
    selector = fields.String(load_default=None, validate=[
        validate.Length(min=1, max=MAX_SELECTOR), validate.Regexp(SELECTOR_PATTERN)],
        metadata={"description": "DNS labels; default tmailYYYYMM (tmailYYYYMMDD if taken)."})


class DkimKeySchema(Schema):
    """A DKIM key as anyone may see it: the public half and the TXT record to publish."""

    Domain = fields.String(attribute="domain", required=True)
    Selector = fields.String(attribute="selector", required=True)
    Algorithm = fields.String(attribute="algorithm", required=True,
                              validate=validate.OneOf(["rsa-sha256", "ed25519-sha256"]),
                              metadata={"description": "The signatures' a= tag."})
    PublicKey = fields.String(attribute="public_key", required=True,
                              metadata={"description": "Base64, the record's p= value."})
    DnsName = fields.String(attribute="dns_name", required=True,
                            metadata={"description": "<selector>._domainkey.<domain>"})
    DnsValue = fields.String(attribute="dns_value", required=True, metadata={
        "description": "The TXT record, ready to paste (255-octet quoted strings when "
                       "longer)."})
    CreatedAt = fields.DateTime(attribute="created_at", required=True)
    Active = fields.Boolean(attribute="active", required=True, metadata={
        "description": "The domain's newest key, the one mail is signed with; older ones "
                       "stay listed (and in DNS) until the domain's keys are deleted."})
