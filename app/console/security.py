"""What every console request goes through: sign-in required, CSRF checked, strict headers.

- Every page but the sign-in form (and the static files) needs a signed-in session; a
  browser without one is sent to the sign-in page, which brings it back afterwards.
- Every POST carries the form's CSRF token (Flask-WTF), checked before the view runs; the
  session cookie is ``SameSite=Strict`` too, but the token does not depend on the browser.
- Nothing changes state on GET (the views' methods say so; a test walks them).
- Responses carry a Content-Security-Policy that allows scripts and styles from tmail only
  (no inline script, no inline style attribute), forbids framing, and are not cached.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from app.console import session
from app.errors import ERROR_PAGES

CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
))
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # queue contents and addresses stay out of caches
}
OPEN_ENDPOINTS = {"console.sign_in", "console.static"}

csrf = CSRFProtect()


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of ours, never another site."""
    if (target and target.startswith("/console/") and not target.startswith("/console//")
            and target.isprintable() and target.isascii() and "\\" not in target):
        return target  # no line end (a split Location header), no tab, no other host
    return url_for("console.overview")


def error_page(status: int, msg: str, raw: str) -> Response:
    """Every error under /console/ as a page of the console, with the API's message."""
    body = render_template("console/error.html", status=status, msg=msg, raw=raw,
                           signed_in=session.signed_in() if status != 503 else False)
    response = Response(body, status=status, mimetype="text/html")
    response.headers.update(HEADERS)
    return response


def init_app(app: Flask, bp: Blueprint) -> None:
    csrf.init_app(app)
    ERROR_PAGES["/console/"] = error_page

    @bp.before_request
    def guard() -> Response | None:
        if request.endpoint in OPEN_ENDPOINTS:
            if request.method == "POST":
                csrf.protect()
            return None
        if not session.signed_in():
            if request.method == "GET":
                return redirect(url_for("console.sign_in", next=request.full_path.rstrip("?")))
            return redirect(url_for("console.sign_in"))
        if request.method == "POST":
            csrf.protect()
        return None

    @bp.after_request
    def headers(response: Response) -> Response:
        response.headers.update(HEADERS)
        return response

    @bp.errorhandler(CSRFError)
    def csrf_refused(exc: CSRFError) -> Response:
        return error_page(400, "form refused", f"{exc.description} Go back, reload the page "
                                               "and send the form again.")
