"""The directory's pages: domains, aliases, relay networks and routes, each a list, a create
form and a delete after a confirmation.

The same rules as the API's because the same code: each form's values are loaded by the API's
schema (:mod:`app.schemas`) and go to the same store call as :mod:`app.directory`'s handler
(a route through :func:`app.directory.route_from`); the stores' refusals name their field
(``remoteHost: ...``) and are shown under it. What the settings add (``TMAIL_LOCAL_DOMAINS``,
``TMAIL_RELAY_NETWORKS``, ``TMAIL_ROUTES``) is listed read-only, without a delete button, as
the API marks it. A route's password is write-only here too: a password input (never filled
in again), and no page shows a stored one (the store does not return it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug import Response
from wtforms import BooleanField, PasswordField, SelectField, StringField, TextAreaField

from app.console import bp
from app.console.forms import attempt, body, choices, confirm_page, confirmed, default, status
from app.directory import route_from, stores
from app.errors import ApiError
from app.schemas import (
    AliasBodySchema,
    DomainCreateSchema,
    RelayNetworkCreateSchema,
    RouteCreateSchema,
)
from app.services import services
from tmail.directory.errors import Conflict
from tmail.routes import Route

_TEXT = {"autocomplete": "off", "spellcheck": "false"}


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]
    delete: str | None  # the URL of its confirmation page; None: read-only
    source: str = ""  # the setting a read-only row comes from


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _page(endpoint: str, title: str, intro: str, headers: tuple[str, ...], rows: list[Row],
          form: FlaskForm, helps: dict[str, str], submit: str) -> tuple[str, int]:
    return render_template("console/directory.html", endpoint=endpoint, title=title,
                           intro=intro, headers=headers, rows=rows, form=form, helps=helps,
                           submit=submit), status(form)


def _created(form: FlaskForm, action: Callable[[], str], endpoint: str, *,
             renames: dict[str, str]) -> Response | None:
    """The create form's POST: a redirect with what was made, or ``None`` with the reasons
    on the form. A duplicate (409 in the API) names no field: under the first one."""
    first = next(name for name in form._fields if name != "csrf_token")
    made = attempt(form, action, renames=renames, fallbacks={Conflict: first})
    if made is None:
        return None
    flash(made, "success")
    return redirect(url_for(endpoint), 303)


def _delete(what: str, action: str, back: str, remove: Callable[[], bool],
            details: list[str] | None = None) -> Response | str:
    """The confirmation page, then (on its POST) the delete and a redirect to ``back``."""
    if not confirmed():
        return confirm_page(f"Delete {what}", f"Delete {what}?", action, url_for(back), details)
    if not remove():
        raise ApiError(404, "not found", what)
    flash(f"Deleted {what}.", "success")
    return redirect(url_for(back), 303)


def _entry_id() -> int:
    entry_id = request.args.get("id", type=int)
    if entry_id is None:
        raise ApiError(404, "not found", "no such id")
    return entry_id


# --- domains ---------------------------------------------------------------------------------

class DomainForm(FlaskForm):
    name = StringField("Domain name", render_kw=_TEXT)
    local = BooleanField("Local: deliver its mail into mailboxes",
                         default=default(DomainCreateSchema, "local"))


@bp.route("/domains", methods=["GET", "POST"])
def domains() -> Response | tuple[str, int]:
    form = DomainForm()
    if request.method == "POST":
        def create() -> str:
            data = DomainCreateSchema().load(body(form, ("name",)))
            made = stores().domains.create(form.name.data or "", local=data["local"])
            return f"Domain {made.name} added ({'local' if made.local else 'relayed'})."

        done = _created(form, create, ".domains", renames={"domain": "name"})
        if done:
            return done
    rows = [Row((domain.name, "local" if domain.local else "relay (backup MX)"),
                url_for(".domains_delete", name=domain.name))
            for domain in stores().domains.list()]
    rows += [Row((name, "local"), None, "TMAIL_LOCAL_DOMAINS")
             for name in services().config.local_domains]
    return _page("console.domains", "Domains",
                 "The domains this server accepts mail for: local ones into mailboxes, the "
                 "others relayed to their MX (a backup MX). A domain with users or aliases "
                 "cannot be deleted before them.",
                 ("Domain", "Mail"), rows, form,
                 {"name": "e.g. example.org (IDN in either form).",
                  "local": "Unchecked: accept its mail from anyone and relay it."},
                 "Add domain")


@bp.route("/domains/delete", methods=["GET", "POST"])
def domains_delete() -> Response | str:
    name = request.args.get("name", "")
    domain = stores().domains.get(name)
    if domain is None:
        raise ApiError(404, "domain not found", name)
    return _delete(f"the domain {domain.name}", url_for(".domains_delete", name=domain.name),
                   ".domains", lambda: stores().domains.delete(domain.name),
                   ["Its mail is refused (or relayed by another entry) from then on."])


# --- aliases ---------------------------------------------------------------------------------

class AliasForm(FlaskForm):
    address = StringField("Address", render_kw=_TEXT)
    deliverTo = TextAreaField("Deliver to", render_kw={**_TEXT, "rows": 3})
    pipe = StringField("Pipe to a command", render_kw=_TEXT)
    miniList = BooleanField("Mini list: its address is the sender of what it forwards")


def _alias_body(form: AliasForm) -> dict[str, Any]:
    """The API's body; the textarea's lines (or commas) are ``deliverTo``'s items."""
    data = body(form, ("address",))
    if "deliverTo" in data:
        data["deliverTo"] = [item.strip() for item in re.split(r"[\r\n,]+", data["deliverTo"])
                             if item.strip()]
    return data


@bp.route("/aliases", methods=["GET", "POST"])
def aliases() -> Response | tuple[str, int]:
    form = AliasForm()
    if request.method == "POST":
        def create() -> str:
            data = AliasBodySchema().load(_alias_body(form))
            made = stores().aliases.create(form.address.data or "", data["deliverTo"],
                                           data["pipe"], data["miniList"])
            return f"Alias {made.address} added."

        done = _created(form, create, ".aliases", renames={"domain": "address"})
        if done:
            return done
    rows = [Row((alias.address, "\n".join(alias.deliver_to) or "-", alias.pipe or "-",
                 _yes(alias.mini_list)), url_for(".aliases_delete", address=alias.address))
            for alias in stores().aliases.list()]
    return _page("console.aliases", "Aliases",
                 "Addresses of local domains that forward to other addresses, to a program, "
                 "or act as a small list.",
                 ("Address", "Deliver to", "Pipe", "Mini list"), rows, form,
                 {"address": "local@domain, or @domain for a whole local domain.",
                  "deliverTo": "One address (or @domain, keeping the local part) per line.",
                  "pipe": "An absolute path and its arguments, run without a shell."},
                 "Add alias")


@bp.route("/aliases/delete", methods=["GET", "POST"])
def aliases_delete() -> Response | str:
    address = request.args.get("address", "")
    alias = stores().aliases.get(address)
    if alias is None:
        raise ApiError(404, "alias not found", address)
    return _delete(f"the alias {alias.address}",
                   url_for(".aliases_delete", address=alias.address), ".aliases",
                   lambda: stores().aliases.delete(alias.address))


# --- relay networks --------------------------------------------------------------------------

class RelayNetworkForm(FlaskForm):
    network = StringField("Network", render_kw=_TEXT)


@bp.route("/relayips", methods=["GET", "POST"])
def relayips() -> Response | tuple[str, int]:
    form = RelayNetworkForm()
    if request.method == "POST":
        def create() -> str:
            data = RelayNetworkCreateSchema().load(body(form))
            return f"Relay network {stores().relay_networks.create(data['network']).network} added."

        done = _created(form, create, ".relayips", renames={})
        if done:
            return done
    rows = [Row((str(network.id), network.network),
                url_for(".relayips_delete", id=network.id))
            for network in stores().relay_networks.list()]
    rows += [Row(("-", str(network)), None, "TMAIL_RELAY_NETWORKS")
             for network in services().config.relay_networks]
    return _page("console.relayips", "Relay networks",
                 "Clients that may relay mail without SMTP AUTH (Postfix's mynetworks).",
                 ("Id", "Network"), rows, form,
                 {"network": "An IP address or a CIDR network: 192.0.2.0/24, 2001:db8::/32."},
                 "Add network")


@bp.route("/relayips/delete", methods=["GET", "POST"])
def relayips_delete() -> Response | str:
    network = stores().relay_networks.get(_entry_id())
    if network is None:
        raise ApiError(404, "relay network not found", request.args.get("id", ""))
    return _delete(f"the relay network {network.network}",
                   url_for(".relayips_delete", id=network.id), ".relayips",
                   lambda: stores().relay_networks.delete(network.id))


# --- routes ----------------------------------------------------------------------------------

class RouteForm(FlaskForm):
    host = StringField("Destination domain", render_kw=_TEXT)
    remoteHost = StringField("Remote host", render_kw=_TEXT)
    remotePort = StringField("Remote port", render_kw={"inputmode": "numeric"})
    priority = StringField("Priority", render_kw={"inputmode": "numeric"})
    starttls = SelectField("STARTTLS", choices=choices(RouteCreateSchema, "starttls"),
                           default=default(RouteCreateSchema, "starttls"),
                           validate_choice=False)
    mailFrom = StringField("Only for the envelope sender", render_kw=_TEXT)
    authUser = StringField("Only for the authenticated user", render_kw=_TEXT)
    authLogin = StringField("AUTH login at the remote host", render_kw=_TEXT)
    authPassword = PasswordField("AUTH password", render_kw={"autocomplete": "new-password"})
    allowPlaintextAuth = BooleanField("Allow AUTH without TLS")


def _route_row(route: Route) -> Row:
    cells = (str(route.id) if route.id is not None else "-", route.host,
             f"{route.remote_host}:{route.remote_port}", str(route.priority), route.starttls,
             route.mail_from or "any", route.auth_user or "any", route.auth_login or "-",
             _yes(route.allow_plaintext_auth))
    if route.id is None:
        return Row(cells, None, "TMAIL_ROUTES")
    return Row(cells, url_for(".routes_delete", id=route.id))


@bp.route("/routes", methods=["GET", "POST"])
def routes() -> Response | tuple[str, int]:
    form = RouteForm()
    if request.method == "POST":
        def create() -> str:
            made = stores().routes.create(route_from(RouteCreateSchema().load(body(form))))
            return f"Route {made.id} added: {made.host} via {made.remote_host}:{made.remote_port}."

        done = _created(form, create, ".routes", renames={"domain": "host"})
        if done:
            return done
    port, priority = default(RouteCreateSchema, "remotePort"), default(RouteCreateSchema,
                                                                        "priority")
    return _page("console.routes", "Routes",
                 "Where mail for a domain goes instead of its MX (a smart host for *). The "
                 "most specific matching routes win; lower priorities are tried first.",
                 ("Id", "Domain", "Remote", "Priority", "STARTTLS", "Sender", "Auth user",
                  "AUTH login", "Plaintext AUTH"),
                 [_route_row(route) for route in stores().routes.list()], form,
                 {"host": "A domain, or * for every domain.",
                  "remoteHost": "A host name or an IP address.",
                  "remotePort": f"Empty: {port}.", "priority": f"Empty: {priority}.",
                  "authPassword": "Write-only: never shown again.",
                  "allowPlaintextAuth": "Only with STARTTLS none: the password goes in clear."},
                 "Add route")


@bp.route("/routes/delete", methods=["GET", "POST"])
def routes_delete() -> Response | str:
    route = stores().routes.get(_entry_id())
    if route is None:
        raise ApiError(404, "route not found", request.args.get("id", ""))
    return _delete(f"route {route.id} ({route.host} via {route.remote_host}:"
                   f"{route.remote_port})", url_for(".routes_delete", id=route.id), ".routes",
                   lambda: stores().routes.delete(route.id or 0))
