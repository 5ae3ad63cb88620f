"""``GET /ping``: a health check for load balancers and monitors, without credentials."""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("ping", __name__)


@bp.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify({"msg": "pong"})
