"""``/domains``, ``/aliases``, ``/relayips``, ``/routes``: the mail directory (tmail's
``rcpthost``, ``alias``, ``relayip`` and ``routes``). Thin handlers over
:mod:`tmail.directory`; errors are its :class:`~tmail.directory.errors.DirectoryError`
(422/409) and 404 here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, url_for

from app.auth import auth
from app.errors import ApiError
from app.parsing import load_body
from app.schemas import (
    AliasBodySchema,
    AliasSchema,
    DomainCreateSchema,
    DomainSchema,
    RelayNetworkCreateSchema,
    RelayNetworkSchema,
    RouteCreateSchema,
    RouteSchema,
)
from tmail.config import Config
from tmail.db import open_database
from tmail.directory.aliases import AliasStore
from tmail.directory.domains import DomainStore
from tmail.directory.relayips import RelayNetworkStore
from tmail.directory.routes import RouteStore, make_route
from tmail.routes import Route

bp = Blueprint("directory", __name__)
# Plain ints: the stores answer "none" for an id out of range (werkzeug's min/max on a
# converter turns a DELETE of such an id into 405, as if the path existed for GET only).
ID = "int"

_domain, _alias, _network, _route = DomainSchema(), AliasSchema(), RelayNetworkSchema(), \
    RouteSchema()


@dataclass(frozen=True)
class DirectoryStores:
    domains: DomainStore
    aliases: AliasStore
    relay_networks: RelayNetworkStore
    routes: RouteStore

    @classmethod
    def build(cls, config: Config) -> DirectoryStores:
        database = open_database(config)
        database.start()  # migrated once per process, at start-up or at first use
        return cls(DomainStore(database), AliasStore(database, config.local_domains),
                   RelayNetworkStore(database), RouteStore(database, config))


def init_app(app: Flask, config: Config) -> None:
    app.extensions["tmail.directory"] = DirectoryStores.build(config)
    app.register_blueprint(bp)


def stores() -> DirectoryStores:
    return current_app.extensions["tmail.directory"]


# --- domains ---------------------------------------------------------------------------------

@bp.get("/domains")
@auth.login_required
def list_domains() -> Response:
    return jsonify(_domain.dump(stores().domains.list(), many=True))


@bp.get("/domains/<name>")
@auth.login_required
def get_domain(name: str) -> Response:
    domain = stores().domains.get(name)
    if domain is None:
        raise ApiError(404, "domain not found", name)
    return jsonify(_domain.dump(domain))


@bp.post("/domains/<name>")
@auth.login_required
def create_domain(name: str) -> tuple[Response, int, dict[str, str]]:
    data = load_body(DomainCreateSchema())
    domain = stores().domains.create(name, local=data["local"])
    return jsonify(_domain.dump(domain)), 201, {
        "Location": url_for("directory.get_domain", name=domain.name)}


@bp.delete("/domains/<name>")
@auth.login_required
def delete_domain(name: str) -> Response:
    if not stores().domains.delete(name):
        raise ApiError(404, "domain not found", name)
    return jsonify({"msg": "domain deleted", "raw": name})


# --- aliases ---------------------------------------------------------------------------------

@bp.get("/aliases")
@auth.login_required
def list_aliases() -> Response:
    return jsonify(_alias.dump(stores().aliases.list(), many=True))


@bp.get("/aliases/<login:address>")
@auth.login_required
def get_alias(address: str) -> Response:
    alias = stores().aliases.get(address)
    if alias is None:
        raise ApiError(404, "alias not found", address)
    return jsonify(_alias.dump(alias))


@bp.post("/aliases/<login:address>")
@auth.login_required
def create_alias(address: str) -> tuple[Response, int, dict[str, str]]:
    data = load_body(AliasBodySchema())
    alias = stores().aliases.create(address, data["deliverTo"], data["pipe"], data["miniList"])
    return jsonify(_alias.dump(alias)), 201, {
        "Location": url_for("directory.get_alias", address=alias.address)}


@bp.put("/aliases/<login:address>")
@auth.login_required
def replace_alias(address: str) -> Response:
    data = load_body(AliasBodySchema())
    alias = stores().aliases.replace(address, data["deliverTo"], data["pipe"], data["miniList"])
    if alias is None:
        raise ApiError(404, "alias not found", address)
    return jsonify(_alias.dump(alias))


@bp.delete("/aliases/<login:address>")
@auth.login_required
def delete_alias(address: str) -> Response:
    if not stores().aliases.delete(address):
        raise ApiError(404, "alias not found", address)
    return jsonify({"msg": "alias deleted", "raw": address})


# --- relay networks --------------------------------------------------------------------------

@bp.get("/relayips")
@auth.login_required
def list_relay_networks() -> Response:
    return jsonify(_network.dump(stores().relay_networks.list(), many=True))


@bp.post("/relayips")
@auth.login_required
def create_relay_network() -> tuple[Response, int, dict[str, str]]:
    network = stores().relay_networks.create(load_body(RelayNetworkCreateSchema())["network"])
    return jsonify(_network.dump(network)), 201, {
        "Location": url_for("directory.get_relay_network", network_id=network.id)}


@bp.get(f"/relayips/<{ID}:network_id>")
@auth.login_required
def get_relay_network(network_id: int) -> Response:
    network = stores().relay_networks.get(network_id)
    if network is None:
        raise ApiError(404, "relay network not found", str(network_id))
    return jsonify(_network.dump(network))


@bp.delete(f"/relayips/<{ID}:network_id>")
@auth.login_required
def delete_relay_network(network_id: int) -> Response:
    if not stores().relay_networks.delete(network_id):
        raise ApiError(404, "relay network not found", str(network_id))
    return jsonify({"msg": "relay network deleted", "raw": str(network_id)})


# --- routes ----------------------------------------------------------------------------------

def route_from(data: dict[str, Any]) -> Route:
    """The checked route ``data`` (loaded by :class:`RouteCreateSchema`) describes: the one
    mapping of the API's fields onto :func:`make_route`, for the API and the web console."""
    return make_route(
        data["host"], data["remoteHost"], remote_port=data["remotePort"],
        priority=data["priority"], starttls=data["starttls"], mail_from=data["mailFrom"],
        auth_user=data["authUser"], auth_login=data["authLogin"],
        auth_password=data["authPassword"], allow_plaintext_auth=data["allowPlaintextAuth"])


@bp.get("/routes")
@auth.login_required
def list_routes() -> Response:
    return jsonify(_route.dump(stores().routes.list(), many=True))


@bp.post("/routes")
@auth.login_required
def create_route() -> tuple[Response, int, dict[str, str]]:
    route = stores().routes.create(route_from(load_body(RouteCreateSchema())))
    return jsonify(_route.dump(route)), 201, {
        "Location": url_for("directory.get_route", route_id=route.id)}


@bp.get(f"/routes/<{ID}:route_id>")
@auth.login_required
def get_route(route_id: int) -> Response:
    route = stores().routes.get(route_id)
    if route is None:
        raise ApiError(404, "route not found", str(route_id))
    return jsonify(_route.dump(route))


@bp.delete(f"/routes/<{ID}:route_id>")
@auth.login_required
def delete_route(route_id: int) -> Response:
    if not stores().routes.delete(route_id):
        raise ApiError(404, "route not found", str(route_id))
    return jsonify({"msg": "route deleted", "raw": str(route_id)})
