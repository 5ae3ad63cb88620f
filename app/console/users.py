"""The users pages: the list, create, change a password, delete after a confirmation.

The same rules as ``/users`` because the same code: :class:`UserCreateSchema` and
:class:`UserPasswordSchema` load what the forms send, :func:`app.users.create_from` and the
store do the rest (the login is the store's to check, as for the API and the CLI).

A login may hold any character an address may (``&``, ``?``, ``#``, ``%``, ``+``...): the
per-user pages take it in the query string (``/console/users/edit?login=...``), which
``url_for`` encodes whatever it is, never in the path.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug import Response
from wtforms import BooleanField, PasswordField, StringField

from app.console import bp
from app.console.forms import attempt, body, confirm_page, confirmed, status
from app.errors import ApiError
from app.schemas import UserCreateSchema, UserPasswordSchema
from app.services import services
from app.users import create_from
from tmail.users import CatchallExists, User, UserError

_NEW_PASSWORD = {"autocomplete": "new-password"}


class UserForm(FlaskForm):
    """``POST /users/LOGIN``'s body, and the login of its path."""

    login = StringField("Login", render_kw={"autocomplete": "off", "spellcheck": "false"})
    passwd = PasswordField("Password", render_kw=_NEW_PASSWORD)
    authRelay = BooleanField("May relay mail after SMTP AUTH (AuthRelay)")
    haveMailbox = BooleanField("Has a mailbox (HaveMailbox)")
    mailboxQuota = StringField("Mailbox quota (MailboxQuota)")
    isCatchall = BooleanField("Catch-all of its domain (IsCatchall)")


class PasswordForm(FlaskForm):
    """``PUT /users/LOGIN``'s body."""

    passwd = PasswordField("New password", render_kw=_NEW_PASSWORD)


def _create(form: UserForm) -> User:
    return create_from(form.login.data or "", UserCreateSchema().load(body(form, ("login",))))


def _user_or_404(login: str) -> User:
    user = services().users.get(login)
    if user is None:
        raise ApiError(404, "user not found", login)
    return user


@bp.route("/users", methods=["GET", "POST"])
def users() -> Response | tuple[str, int]:
    form = UserForm()
    if request.method == "POST":
        created = attempt(form, lambda: _create(form),
                          fallbacks={CatchallExists: "isCatchall", UserError: "login"})
        if created is not None:
            flash(f"User {created.login} created.", "success")
            return redirect(url_for(".users"), 303)
    text = request.args.get("q", "").strip()
    shown = [user for user in services().users.list()
             if text.casefold() in user.login.casefold()]
    return render_template("console/users.html", form=form, users=shown, q=text,
                           default_quota=services().config.default_quota), status(form)


@bp.route("/users/edit", methods=["GET", "POST"])
def users_edit() -> Response | tuple[str, int]:
    login = request.args.get("login", "")
    user = _user_or_404(login)
    form = PasswordForm()
    if request.method == "POST":
        data = attempt(form, lambda: UserPasswordSchema().load(body(form)))
        if data is not None:
            if not services().users.set_password(login, data["passwd"]):
                raise ApiError(404, "user not found", login)
            flash(f"Password of {user.login} changed.", "success")
            return redirect(url_for(".users_edit", login=user.login), 303)
    return render_template("console/users_edit.html", user=user, form=form), status(form)


@bp.route("/users/delete", methods=["GET", "POST"])
def users_delete() -> Response | str:
    login = request.args.get("login", "")
    user = _user_or_404(login)
    if not confirmed():
        return confirm_page(
            "Delete a user", f"Delete the user {user.login}?",
            url_for(".users_delete", login=user.login), url_for(".users"),
            ["It can no longer sign in (SMTP AUTH, IMAP) nor receive mail."]
            + ([f"Its mailbox stays on disk: {user.home}"] if user.home else []))
    if not services().users.delete(login):
        raise ApiError(404, "user not found", login)
    flash(f"User {user.login} deleted.", "success")
    return redirect(url_for(".users"), 303)
