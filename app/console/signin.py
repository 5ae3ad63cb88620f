"""Sign-in and sign-out: the admin credential through a form, throttled like the API's.

The same check (:func:`app.auth.admin_credentials_ok`) and the same per-IP throttle
(:mod:`app.throttle`) as the API's Basic auth: failures counted in one place, whichever door
they knock on. A refused sign-in answers 401 with the form again; a throttled one 429 with
Retry-After, without looking at the credentials.
"""

from __future__ import annotations

from flask import Response, make_response, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length

from app.auth import admin_credentials_ok
from app.console import bp, session
from app.console.security import safe_next
from app.services import services


class SignInForm(FlaskForm):
    username = StringField("User name", validators=[InputRequired(), Length(max=256)],
                           render_kw={"autocomplete": "username", "autofocus": True})
    password = PasswordField("Password", validators=[InputRequired(), Length(max=1024)],
                             render_kw={"autocomplete": "current-password"})


def _page(form: SignInForm, status: int = 200, error: str = "",
          headers: dict[str, str] | None = None) -> Response:
    response = make_response(render_template("console/sign_in.html", form=form, error=error,
                                             next=request.args.get("next", "")), status)
    response.headers.update(headers or {})
    return response


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response:
    form = SignInForm()
    if request.method == "GET":
        if session.signed_in():
            return redirect(safe_next(request.args.get("next")))
        return _page(form)
    tmail = services()
    client = request.remote_addr or ""
    wait = tmail.throttle.retry_after(client)
    if wait:
        return _page(form, 429, f"Too many failed sign-ins: try again in {wait} seconds.",
                     {"Retry-After": str(wait)})
    if not form.validate():
        return _page(form, 400)
    if not admin_credentials_ok(tmail.config, form.username.data or "", form.password.data or ""):
        tmail.throttle.failed(client)
        return _page(form, 401, "Wrong user name or password.")
    tmail.throttle.succeeded(client)
    session.sign_in()
    return redirect(safe_next(request.args.get("next")), 303)


@bp.post("/sign-out")
def sign_out() -> Response:
    session.sign_out()
    return redirect(url_for("console.sign_in"), 303)
