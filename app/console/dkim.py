"""The DKIM page: the keys per domain with the TXT record to publish, a form to make one (the
API's :class:`DkimCreateSchema` options), and disabling a domain's signing after a
confirmation.

Through the same :class:`~tmail.dkim.keys.KeyStore` as ``/dkim``: what it lists is a
:class:`~tmail.dkim.keys.DkimKey`, which has no field for the private key, so none can reach
a page.
"""

from __future__ import annotations

from itertools import groupby

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug import Response
from wtforms import SelectField, StringField

from app.console import bp
from app.console.forms import attempt, body, choices, confirm_page, confirmed, default, status
from app.dkim import keys
from app.errors import ApiError
from app.schemas import DkimCreateSchema
from tmail.directory.errors import Conflict
from tmail.dkim.keys import DkimKey, NoSuchDomain


class DkimForm(FlaskForm):
    """``POST /dkim/DOMAIN``'s body, and the domain of its path."""

    domain = StringField("Local domain", render_kw={"autocomplete": "off", "spellcheck": "false"})
    algorithm = SelectField("Algorithm", choices=choices(DkimCreateSchema, "algorithm"),
                            default=default(DkimCreateSchema, "algorithm"), validate_choice=False)
    selector = StringField("Selector", render_kw={"autocomplete": "off", "spellcheck": "false"})


def _create(form: DkimForm) -> DkimKey:
    data = DkimCreateSchema().load(body(form, ("domain",)))
    return keys().create(form.domain.data or "", data["algorithm"], data["selector"])


@bp.route("/dkim", methods=["GET", "POST"])
def dkim() -> Response | tuple[str, int]:
    form = DkimForm()
    if request.method == "POST":
        made = attempt(form, lambda: _create(form),
                       fallbacks={NoSuchDomain: "domain", Conflict: "selector"})
        if made is not None:
            flash(f"DKIM key {made.selector} made for {made.domain}: publish its TXT record "
                  f"{made.dns_name}; {made.domain}'s mail is signed with it from now on.",
                  "success")
            return redirect(url_for(".dkim", _anchor=f"dkim-{made.domain}"), 303)
    by_domain = [(domain, list(found)) for domain, found in
                 groupby(keys().list(), key=lambda key: key.domain)]
    selector_help = DkimCreateSchema().fields["selector"].metadata["description"]
    return render_template("console/dkim.html", form=form, by_domain=by_domain,
                           selector_help=selector_help), status(form)


@bp.route("/dkim/delete", methods=["GET", "POST"])
def dkim_delete() -> Response | str:
    domain = request.args.get("domain", "")
    found = keys().get(domain)
    if found is None:
        raise ApiError(404, "no DKIM key", f"{domain} has no DKIM key: its mail is not signed")
    if not confirmed():
        return confirm_page(
            "Disable DKIM", f"Delete every DKIM key of {found.domain}?",
            url_for(".dkim_delete", domain=found.domain), url_for(".dkim"),
            [f"{found.domain}'s mail is no longer signed from then on.",
             "Remove its TXT records from DNS only after the mail signed with them has "
             "been delivered."], button="Disable DKIM")
    removed = keys().delete(found.domain)
    if not removed:
        raise ApiError(404, "no DKIM key", found.domain)
    flash(f"DKIM disabled for {found.domain} ({removed} key{'s' if removed > 1 else ''} "
          "deleted).", "success")
    return redirect(url_for(".dkim"), 303)
