"""``/users``: tmail's user administration (the seed's contract)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for
from werkzeug.routing import PathConverter

from app.auth import auth
from app.errors import ApiError
from app.parsing import load_body
from app.schemas import UserCreateSchema, UserPasswordSchema, UserSchema
from app.services import services
from tmail.users import User

bp = Blueprint("users", __name__)


class LoginConverter(PathConverter):
    """Any text after ``/users/``, newlines included, so that a bad login gets its 422 (with
    the reason) from the schema instead of a bare 404 from the router."""

    regex = "(?s:[^/].*?)"

_user = UserSchema()


def create_from(login: str, data: dict[str, Any]) -> User:
    """The user ``data`` (loaded by :class:`UserCreateSchema`) describes, created: the one
    mapping of the API's fields onto the store's, for the API and the web console."""
    return services().users.create(
        login,
        data["passwd"],
        auth_relay=data["authRelay"],
        have_mailbox=data["haveMailbox"],
        mailbox_quota=data["mailboxQuota"],
        is_catchall=data["isCatchall"],
    )


@bp.get("/users")
@auth.login_required
def list_users() -> Response:
    return jsonify(_user.dump(services().users.list(), many=True))


@bp.post("/users/<login:login>")
@auth.login_required
def create_user(login: str) -> tuple[Response, int, dict[str, str]]:
    user = create_from(login, load_body(UserCreateSchema()))
    return jsonify(_user.dump(user)), 201, {"Location": url_for("users.get_user", login=login)}


@bp.get("/users/<login:login>")
@auth.login_required
def get_user(login: str) -> Response:
    user = services().users.get(login)
    if user is None:
        raise ApiError(404, "user not found", login)
    return jsonify(_user.dump(user))


@bp.put("/users/<login:login>")
@auth.login_required
def change_password(login: str) -> tuple[str, int]:
    data = load_body(UserPasswordSchema())
    if not services().users.set_password(login, data["passwd"]):
        raise ApiError(404, "user not found", login)
    return "", 204


@bp.delete("/users/<login:login>")
@auth.login_required
def delete_user(login: str) -> Response:
    if not services().users.delete(login):
        raise ApiError(404, "user not found", login)
    return jsonify({"msg": "user deleted", "raw": login})
