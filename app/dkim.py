"""``/dkim``: DKIM keys per local domain (tmail's ``dkim enable|disable|getdnsrecord``).

Thin handlers over :class:`tmail.dkim.keys.KeyStore`. What they dump is a
:class:`~tmail.dkim.keys.DkimKey`, which holds no private key: none can reach a response.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for

from app.auth import auth
from app.errors import ApiError
from app.parsing import json_body
from app.schemas import DkimCreateSchema, DkimKeySchema
from tmail.config import Config
from tmail.db import open_database
from tmail.dkim.keys import KeyStore

bp = Blueprint("dkim", __name__)
_key = DkimKeySchema()


def init_app(app: Flask, config: Config) -> None:
    database = open_database(config)
    database.migrate()  # once per process
    app.extensions["tmail.dkim"] = KeyStore(database, config.local_domains)
    app.register_blueprint(bp)


def keys() -> KeyStore:
    return current_app.extensions["tmail.dkim"]


@bp.get("/dkim")
@auth.login_required
def list_keys() -> Response:
    return jsonify(_key.dump(keys().list(), many=True))


@bp.get("/dkim/<domain>")
@auth.login_required
def get_key(domain: str) -> Response:
    key = keys().get(domain)
    if key is None:
        raise ApiError(404, "no DKIM key", f"{domain} has no DKIM key: its mail is not signed")
    return jsonify(_key.dump(key))


@bp.post("/dkim/<domain>")
@auth.login_required
def create_key(domain: str) -> tuple[Response, int, dict[str, str]]:
    body = json_body() if request.get_data().strip() else {}  # both fields are optional
    data = DkimCreateSchema().load(body)
    key = keys().create(domain, data["algorithm"], data["selector"])
    return jsonify(_key.dump(key)), 201, {"Location": url_for("dkim.get_key",
                                                              domain=key.domain)}


@bp.delete("/dkim/<domain>")
@auth.login_required
def delete_key(domain: str) -> tuple[str, int]:
    if not keys().delete(domain):
        raise ApiError(404, "no DKIM key", domain)
    return "", 204
