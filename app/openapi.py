"""``GET /openapi.json``: the API described from the marshmallow schemas that validate it.

apispec turns the schemas into JSON Schema, so a field added to a schema appears in the
document at once. The operations themselves (paths, statuses) are listed here, next to each
other, and a test checks that every Flask route has its entry and the reverse.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from app import schemas
from tmail import __version__
from tmail.directory.tables import MAX_ENTRY_ID
from tmail.queue.layout import MAX_ID

bp = Blueprint("openapi", __name__)

JSON = "application/json"
_REASONS = {
    400: "Malformed JSON body or bad query parameter.",
    401: "Missing or wrong admin credentials.",
    404: "No such user, message, directory entry or DKIM key (or the domain is not local).",
    409: "The operation does not apply to this message in its current state, or the "
         "directory entry (or DKIM selector) exists already or is still in use.",
    422: "Invalid fields: `raw` names each field and why.",
    429: "Too many failed sign-ins from this client IP: wait `Retry-After` seconds.",
}
_ID = {"in": "path", "name": "id", "required": True,
       "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}, "example": 1,
       "description": "The queue record's Id."}
_LOGIN = {"in": "path", "name": "login", "required": True,
          "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
          "description": "The user's login, e.g. user@example.org."}


_NAME = {"in": "path", "name": "name", "required": True,
         "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
         "example": "example.org", "description": "The domain (stored as its A-label)."}
_ADDRESS = {"in": "path", "name": "address", "required": True,
            "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
            "example": "info@example.org",
            "description": "local@domain, or @domain for a domain alias."}
_ENTRY_ID = {"in": "path", "name": "id", "required": True,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ENTRY_ID},
             "example": 1,
             "description": "The entry's Id."}


def _json(schema: Any, description: str, many: bool = False) -> dict[str, Any]:
    body: Any = {"type": "array", "items": schema} if many else schema
    return {"description": description, "content": {JSON: {"schema": body}}}


def _operation(
    summary: str,
    responses: dict[int, dict[str, Any]],
    errors: tuple[int, ...] = (),
    *,
    body: Any = None,
    query: type[schemas.Schema] | None = None,
    path: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {
        str(status): response for status, response in responses.items()}}
    for status in (*errors, *(() if public else (401, 429))):
        operation["responses"][str(status)] = _json("Error", _REASONS[status])
    parameters = [path] if path else []
    if query is not None:
        parameters.append({"in": "query", "schema": query})
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    if public:
        operation["security"] = []
    return operation


def _users(spec: APISpec) -> None:
    spec.path("/users", operations={"get": _operation(
        "Every user.", {200: _json("User", "The users.", many=True)})})
    spec.path("/users/{login}", operations={
        "get": _operation("One user.", {200: _json("User", "The user.")}, (404,), path=_LOGIN),
        "post": _operation(
            "Create a user (its password is hashed twice: bcrypt for tmail, SHA512-CRYPT for "
            "Dovecot).",
            {201: _json("User", "The new user; `Location` names it.")}, (400, 422),
            body=schemas.UserCreateSchema, path=_LOGIN),
        "put": _operation("Change the user's password.", {204: {"description": "Changed."}},
                          (400, 404, 422), body=schemas.UserPasswordSchema, path=_LOGIN),
        "delete": _operation("Delete a user (the mailbox stays on disk).",
                             {200: _json("Error", "`{\"msg\": \"user deleted\"}`.")}, (404,),
                             path=_LOGIN),
    })


def _queue(spec: APISpec) -> None:
    spec.path("/queue", operations={"get": _operation(
        "Queue records in Id order, streamed; filters as the bulk actions.",
        {200: _json("QueueRecord", "The matching records.", many=True)}, (400,),
        query=schemas.QueueListSchema)})
    spec.path("/queue/summary", operations={"get": _operation(
        "Counts by destination domain and age bucket (qshape), by status, oldest age.",
        {200: _json("Summary", "The summary.")}, (400,), query=schemas.SummarySchema)})
    spec.path("/queue/{id}", operations={"get": _operation(
        "One record.", {200: _json("QueueRecord", "The record.")}, (404,), path=_ID)})
    spec.path("/queue/{id}/raw", operations={"get": _operation(
        "The queued message as it will be sent (`headers=1`: the header block only).",
        {200: {"description": "The message.",
               "content": {"message/rfc822": {"schema": {"type": "string"}}}}},
        (400, 404), query=schemas.RawQuerySchema, path=_ID)})
    for action, method, what in (("discard", "delete", "Discard"),
                                 ("bounce", "delete", "Bounce to the sender")):
        spec.path(f"/queue/{action}/{{id}}", operations={method: _operation(
            f"{what} one record (marked if it is being delivered).",
            {200: _json("Error", "`msg` says what was done; `raw` if it is deferred.")},
            (404, 409), path=_ID)})
    for action in ("hold", "release", "retry"):
        spec.path(f"/queue/{action}/{{id}}", operations={"post": _operation(
            f"{action.capitalize()} one record.", {200: _json("QueueRecord", "The record.")},
            (404, 409), path=_ID)})
    for action, method in (("hold", "post"), ("release", "post"), ("retry", "post"),
                           ("discard", "delete"), ("bounce", "delete")):
        spec.path(f"/queue/{action}", operations={method: _operation(
            f"{action.capitalize()} every matching record (a filter or all=true is required).",
            {200: _json("BulkResult", "How many matched, were done, were skipped.")}, (400,),
            query=schemas.BulkSchema)})


def _deleted(what: str) -> dict[int, dict[str, Any]]:
    return {200: _json("Error", f"`{{\"msg\": \"{what} deleted\"}}`.")}


def _directory(spec: APISpec) -> None:
    spec.path("/domains", operations={"get": _operation(
        "Every domain: local (mailboxes) or relayed (local false).",
        {200: _json("Domain", "The domains.", many=True)})})
    spec.path("/domains/{name}", operations={
        "get": _operation("One domain.", {200: _json("Domain", "The domain.")}, (404,),
                          path=_NAME),
        "post": _operation("Add a domain.", {201: _json("Domain", "The new domain.")},
                           (400, 409, 422), body=schemas.DomainCreateSchema, path=_NAME),
        "delete": _operation("Delete a domain no user or alias uses (409 names them).",
                             _deleted("domain"), (404, 409), path=_NAME),
    })
    spec.path("/aliases", operations={"get": _operation(
        "Every alias.", {200: _json("Alias", "The aliases.", many=True)})})
    spec.path("/aliases/{address}", operations={
        "get": _operation("One alias.", {200: _json("Alias", "The alias.")}, (404,),
                          path=_ADDRESS),
        "post": _operation("Add an alias (its domain must be local).",
                           {201: _json("Alias", "The new alias.")}, (400, 409, 422),
                           body=schemas.AliasBodySchema, path=_ADDRESS),
        "put": _operation("Replace an alias's targets, command and flag.",
                          {200: _json("Alias", "The alias.")}, (400, 404, 422),
                          body=schemas.AliasBodySchema, path=_ADDRESS),
        "delete": _operation("Delete an alias.", _deleted("alias"), (404,), path=_ADDRESS),
    })
    spec.path("/relayips", operations={
        "get": _operation("Every relay network (besides TMAIL_RELAY_NETWORKS).",
                          {200: _json("RelayNetwork", "The networks.", many=True)}),
        "post": _operation("Add a relay network (an IP or a CIDR, v4 or v6).",
                           {201: _json("RelayNetwork", "The new network.")}, (400, 409, 422),
                           body=schemas.RelayNetworkCreateSchema),
    })
    spec.path("/relayips/{id}", operations={
        "get": _operation("One relay network.", {200: _json("RelayNetwork", "The network.")},
                          (404,), path=_ENTRY_ID),
        "delete": _operation("Delete a relay network.", _deleted("relay network"), (404,),
                             path=_ENTRY_ID),
    })
    spec.path("/routes", operations={
        "get": _operation("Every route: the stored ones, then TMAIL_ROUTES (Bootstrap).",
                          {200: _json("Route", "The routes.", many=True)}),
        "post": _operation("Add a route (authPassword is write-only).",
                           {201: _json("Route", "The new route, without its password.")},
                           (400, 409, 422), body=schemas.RouteCreateSchema),
    })
    spec.path("/routes/{id}", operations={
        "get": _operation("One stored route.", {200: _json("Route", "The route.")}, (404,),
                          path=_ENTRY_ID),
        "delete": _operation("Delete a stored route.", _deleted("route"), (404,),
                             path=_ENTRY_ID),
    })


_DOMAIN = {"in": "path", "name": "domain", "required": True,
           "schema": {"type": "string", "minLength": 1, "pattern": r"^[^/]+$"},
           "example": "example.org", "description": "A local domain."}


def _dkim(spec: APISpec) -> None:
    spec.path("/dkim", operations={"get": _operation(
        "Every DKIM key (public halves), each domain's active one first.",
        {200: _json("DkimKey", "The keys.", many=True)})})
    create = _operation(
        "Make a key pair for a local domain (RSA 2048 or Ed25519); it signs from now on "
        "(a rotation: older keys stay listed). The private key never leaves the server.",
        {201: _json("DkimKey", "The new key; publish DnsValue at DnsName.")},
        (400, 404, 409, 422), body=schemas.DkimCreateSchema, path=_DOMAIN)
    create["requestBody"]["required"] = False  # both fields have defaults
    spec.path("/dkim/{domain}", operations={
        "get": _operation("The key the domain's mail is signed with, and its DNS record.",
                          {200: _json("DkimKey", "The active key.")}, (404,), path=_DOMAIN),
        "post": create,
        "delete": _operation("Delete the domain's keys: its mail is no longer signed.",
                             {204: {"description": "Deleted."}}, (404,), path=_DOMAIN),
    })


def _service(spec: APISpec) -> None:
    spec.path("/ping", operations={"get": _operation(
        "Health check.", {200: _json({"type": "object", "properties": {
            "msg": {"type": "string"}}}, "`{\"msg\": \"pong\"}`.")}, public=True)})
    spec.path("/openapi.json", operations={"get": _operation(
        "This document.", {200: _json({"type": "object"}, "OpenAPI 3.0.")}, public=True)})
    spec.path("/metrics", operations={"get": _operation(
        "Prometheus metrics (public when TMAIL_METRICS_PUBLIC is true).",
        {200: {"description": "Prometheus text format.",
               "content": {"text/plain": {"schema": {"type": "string"}}}}})})


@cache
def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="tmail admin API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Users, the mail directory and the mail queue of a tmail "
                             "server. Errors are `{\"msg\": ..., \"raw\": ...}` with the "
                             "HTTP status."},
        security=[{"basicAuth": []}],
    )
    spec.components.security_scheme("basicAuth", {"type": "http", "scheme": "basic"})
    for name, schema in (("User", schemas.UserSchema), ("QueueRecord", schemas.QueueRecordSchema),
                         ("BulkResult", schemas.BulkResultSchema),
                         ("Summary", schemas.SummaryResultSchema),
                         ("Error", schemas.ErrorSchema),
                         ("Domain", schemas.DomainSchema), ("Alias", schemas.AliasSchema),
                         ("RelayNetwork", schemas.RelayNetworkSchema),
                         ("Route", schemas.RouteSchema), ("DkimKey", schemas.DkimKeySchema)):
        spec.components.schema(name, schema=schema)
    _users(spec)
    _queue(spec)
    _directory(spec)
    _dkim(spec)
    _service(spec)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(build_spec())
