"""The web console: server-rendered pages under ``/console/`` over the same core as the API.

A second face of the admin API for people rather than scripts: the pages call the same
functions of ``tmail`` the API's handlers call (``services()``), never the API over HTTP, so
that a rule (a validation, a queue action) exists once. Everything works without JavaScript
(plain forms, POST for every action); Bootstrap's CSS and JS come from the Bootstrap-Flask
package, served by tmail itself (no CDN).

Safe by default (:mod:`app.console.security`): a sign-in form with a server-side session
(:mod:`app.console.session`), CSRF tokens on every form (Flask-WTF), a Content-Security-Policy
without inline scripts or styles, ``frame-ancestors 'none'``, and Jinja2's autoescaping.

Each page module registers its views on :data:`bp`; :data:`NAV` lists the pages of the
navigation bar, shown when their endpoint exists.
"""

from __future__ import annotations

from flask import Blueprint, Flask
from flask_bootstrap import Bootstrap5

from tmail.config import Config

bp = Blueprint("console", __name__, url_prefix="/console",
               template_folder="templates", static_folder="static")

# (endpoint, label) of the navigation bar, in order.
NAV = (
    ("console.overview", "Overview"),
    ("console.queue", "Queue"),
    ("console.users", "Users"),
    ("console.domains", "Domains"),
    ("console.aliases", "Aliases"),
    ("console.relayips", "Relay networks"),
    ("console.routes", "Routes"),
    ("console.dkim", "DKIM"),
)


def init_app(app: Flask, config: Config) -> None:
    # The page modules register their views on ``bp``: imported here, once it exists.
    from app.console import (
        directory,
        dkim,
        format,
        message,
        overview,
        queue,
        security,
        session,
        signin,
        users,
    )

    del directory, dkim, message, overview, queue, signin, users  # imported for their views
    app.config.update(
        BOOTSTRAP_SERVE_LOCAL=True,  # Bootstrap from the package, never a CDN
        BOOTSTRAP_BTN_SIZE="sm",
        WTF_CSRF_CHECK_DEFAULT=False,  # the JSON API has no cookies to forge: console only
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its sign-in (session TTL)
    )
    Bootstrap5(app)
    session.init_app(app, config)
    security.init_app(app, bp)
    format.init_app(app)

    @bp.app_context_processor
    def layout() -> dict[str, object]:
        """The navigation bar (for a signed-in browser) and the node's name."""
        nav = [(endpoint, label) for endpoint, label in NAV
               if endpoint in app.view_functions] if session.signed_in() else []
        return {"nav": nav, "config_node": config.node}

    app.register_blueprint(bp)
