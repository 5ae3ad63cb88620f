"""The directory's API against the real gunicorn over HTTPS: each resource's CRUD, its
errors, and the smart-host password that never comes back."""

from __future__ import annotations

import secrets

import pytest

from tests.conftest import ApiServer

JSON = "application/json; charset=UTF-8"


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    """Every test here runs on SQLite and on PostgreSQL (the tables live on both)."""
    return engine_api


def new_domain() -> str:
    return f"d{secrets.token_hex(4)}.test"


def local_domain(api: ApiServer) -> str:
    name = new_domain()
    assert api.session.post(api.url(f"/domains/{name}"), json={"local": True}).status_code == 201
    return name


def test_domain_crud_stores_the_idna_lower_case_form(api: ApiServer) -> None:
    label = secrets.token_hex(3)
    created = api.session.post(api.url(f"/domains/Bücher-{label}.TEST"), json={"local": False})
    assert created.status_code == 201 and created.headers["Content-Type"] == JSON
    domain = created.json()
    name = domain["Name"]
    assert list(domain) == ["Id", "Name", "Local"]
    assert name.startswith("xn--") and name == name.lower() and domain["Local"] is False
    assert created.headers["Location"].endswith(f"/domains/{name}")
    assert api.session.get(api.url(f"/domains/bücher-{label}.test")).json() == domain
    assert domain in api.session.get(api.url("/domains")).json()
    again = api.session.post(api.url(f"/domains/{name}"), json={})
    assert (again.status_code, again.json()["msg"]) == (409, "domain exists")
    assert api.session.delete(api.url(f"/domains/{name}")).json() == {
        "msg": "domain deleted", "raw": name}
    assert api.session.get(api.url(f"/domains/{name}")).status_code == 404
    assert api.session.delete(api.url(f"/domains/{name}")).status_code == 404


@pytest.mark.parametrize("name", ["no_dots", "bad..dots.test", "-x.test", "[192.0.2.1]",
                                  "a" * 64 + ".test"])
def test_a_bad_domain_is_refused_with_422(api: ApiServer, name: str) -> None:
    response = api.session.post(api.url(f"/domains/{name}"), json={"local": True})
    assert response.status_code == 422
    assert response.json()["raw"].startswith("domain:")


@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"'])
def test_an_unparseable_body_is_400(api: ApiServer, body: bytes) -> None:
    response = api.session.post(api.url(f"/domains/{new_domain()}"), data=body)
    assert response.status_code == 400 and set(response.json()) == {"msg", "raw"}


def test_a_domain_still_used_cannot_be_deleted_and_409_says_by_what(api: ApiServer) -> None:
    domain = local_domain(api)
    assert api.session.post(api.url(f"/users/u@{domain}"),
                            json={"passwd": "secret1", "haveMailbox": True}).ok
    assert api.session.post(api.url(f"/aliases/info@{domain}"),
                            json={"deliverTo": [f"u@{domain}"]}).ok
    refused = api.session.delete(api.url(f"/domains/{domain}"))
    assert refused.status_code == 409
    assert refused.json() == {"msg": "domain in use", "raw": f"{domain} is still used by user "
                              f"u@{domain} and alias info@{domain}: delete them first"}
    api.session.delete(api.url(f"/users/u@{domain}"))
    api.session.delete(api.url(f"/aliases/info@{domain}"))
    assert api.session.delete(api.url(f"/domains/{domain}")).status_code == 200


def test_alias_crud(api: ApiServer) -> None:
    domain = local_domain(api)
    body = {"deliverTo": ["a@x.example", "B@y.example", "a@x.example"],
            "pipe": "/usr/local/bin/cmd 'an arg'", "miniList": True}
    created = api.session.post(api.url(f"/aliases/List@{domain.upper()}"), json=body)
    assert created.status_code == 201, created.text
    alias = created.json()
    assert list(alias) == ["Id", "Address", "Local", "Domain", "DeliverTo", "Pipe", "MiniList"]
    assert (alias["Address"], alias["Local"], alias["Domain"]) == (
        f"List@{domain}", "List", domain)
    assert (alias["DeliverTo"], alias["Pipe"], alias["MiniList"]) == (
        ["a@x.example", "B@y.example"], body["pipe"], True)
    assert api.session.get(api.url(f"/aliases/list@{domain}")).json() == alias
    assert alias in api.session.get(api.url("/aliases")).json()
    duplicate = api.session.post(api.url(f"/aliases/LIST@{domain}"), json=body)
    assert (duplicate.status_code, duplicate.json()["msg"]) == (409, "alias exists")
    changed = api.session.put(api.url(f"/aliases/list@{domain}"),
                              json={"deliverTo": ["c@z.example"]})
    assert changed.status_code == 200
    assert (changed.json()["DeliverTo"], changed.json()["Pipe"],
            changed.json()["MiniList"]) == (["c@z.example"], "", False)
    assert api.session.delete(api.url(f"/aliases/list@{domain}")).status_code == 200
    for method in ("get", "put", "delete"):
        gone = api.session.request(method, api.url(f"/aliases/list@{domain}"),
                                   json={"deliverTo": ["c@z.example"]})
        assert gone.status_code == 404, method


def test_a_domain_alias(api: ApiServer) -> None:
    domain = local_domain(api)
    created = api.session.post(api.url(f"/aliases/@{domain}"), json={"deliverTo": ["@new.test"]})
    assert created.status_code == 201
    assert (created.json()["Address"], created.json()["Local"]) == (f"@{domain}", "")


@pytest.mark.parametrize(("address", "body", "raw"), [
    ("x@not-local.example", {"deliverTo": ["a@b.example"]}, "address: not-local.example is not"),
    ("x@{domain}", {"deliverTo": []}, "deliverTo: an alias needs at least one"),
    ("x@{domain}", {}, "deliverTo: an alias needs at least one"),
    ("x@{domain}", {"deliverTo": ["not an address"]}, "deliverTo: 'not an address'"),
    ("x@{domain}", {"pipe": "relative/cmd"}, "pipe: the command must start"),
    ("x@{domain}", {"pipe": "/bin/cmd 'unclosed"}, "pipe: No closing quotation"),
    ("x@{domain}", {"pipe": "/bin/cmd\nRCPT"}, "pipe: control characters"),
    ("x@{domain}", {"deliverTo": "a@b.example"}, "deliverTo: Not a valid list"),
    ("x@{domain}", {"miniList": "yes"}, "miniList: Not a valid boolean"),
    ("x@{domain}", {"deliverTo": ["a@b.example"], "extra": 1}, "extra: Unknown field"),
    ("no-at-sign", {"deliverTo": ["a@b.example"]}, "address: 'no-at-sign'"),
])
def test_a_bad_alias_is_refused_with_422(api: ApiServer, address: str, body: dict,  # type: ignore[type-arg]
                                         raw: str) -> None:
    domain = local_domain(api)
    response = api.session.post(api.url(f"/aliases/{address.format(domain=domain)}"), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["raw"].startswith(raw), response.json()


def test_relay_network_crud(api: ApiServer) -> None:
    network = f"2001:db8:{secrets.randbelow(65535):x}::/48"
    created = api.session.post(api.url("/relayips"), json={"network": network.upper()})
    assert created.status_code == 201
    entry = created.json()
    assert list(entry) == ["Id", "Network"] and entry["Network"] == network
    assert api.session.get(api.url(f"/relayips/{entry['Id']}")).json() == entry
    assert entry in api.session.get(api.url("/relayips")).json()
    assert api.session.post(api.url("/relayips"), json={"network": network}).status_code == 409
    assert api.session.delete(api.url(f"/relayips/{entry['Id']}")).status_code == 200
    assert api.session.delete(api.url(f"/relayips/{entry['Id']}")).status_code == 404
    single = api.session.post(api.url("/relayips"), json={"network": "198.51.100.7"})
    assert single.json()["Network"] == "198.51.100.7/32"
    api.session.delete(api.url(f"/relayips/{single.json()['Id']}"))


@pytest.mark.parametrize("network", ["192.0.2.1/24", "300.1.1.1", "10.0.0.0/33", "fe80::/ab",
                                     ""])
def test_a_bad_network_is_refused_with_422(api: ApiServer, network: str) -> None:
    response = api.session.post(api.url("/relayips"), json={"network": network})
    assert response.status_code == 422
    assert response.json()["raw"].startswith("network:")


SECRET = "never-shown-" + secrets.token_hex(8)


def test_route_crud_and_the_password_never_comes_back(api: ApiServer) -> None:
    body = {"host": "Example.ORG", "remoteHost": "smtp.relay.example", "remotePort": 587,
            "priority": 10, "starttls": "encrypt", "mailFrom": "News@Example.org",
            "authLogin": "relay-user", "authPassword": SECRET}
    created = api.session.post(api.url("/routes"), json=body)
    assert created.status_code == 201, created.text
    route = created.json()
    assert list(route) == ["Id", "Host", "MailFrom", "AuthUser", "RemoteHost", "RemotePort",
                           "Priority", "Starttls", "AuthLogin", "AllowPlaintextAuth",
                           "Bootstrap"]
    assert (route["Host"], route["MailFrom"], route["AuthUser"], route["RemotePort"],
            route["Priority"], route["Starttls"], route["AuthLogin"], route["Bootstrap"]) == (
        "example.org", "news@example.org", None, 587, 10, "encrypt", "relay-user", False)
    shown = [created, api.session.get(api.url(f"/routes/{route['Id']}")),
             api.session.get(api.url("/routes")), api.session.get(api.url("/openapi.json"))]
    assert all(SECRET not in response.text for response in shown)
    assert all("uthPassword" not in response.text for response in shown[:3])
    document = shown[3].json()["components"]["schemas"]
    assert document["RouteCreate"]["properties"]["authPassword"]["writeOnly"] is True
    assert "AuthPassword" not in document["Route"]["properties"]
    again = api.session.post(api.url("/routes"), json=body)
    assert again.status_code == 409
    assert SECRET not in again.text
    assert api.session.delete(api.url(f"/routes/{route['Id']}")).status_code == 200
    assert api.session.get(api.url(f"/routes/{route['Id']}")).status_code == 404
    assert SECRET not in (api.base_url and open_log(api))


def open_log(api: ApiServer) -> str:
    from pathlib import Path

    return Path(api.env["TMAIL_DATA_DIR"]).parent.joinpath("gunicorn.log").read_text()


@pytest.mark.parametrize(("body", "raw"), [
    ({"host": "example.org"}, "remoteHost: Missing data"),
    ({"host": "example.org", "remoteHost": "bad host!"}, "remoteHost: 'bad host!'"),
    ({"host": "not a domain", "remoteHost": "mx.example"}, "domain: 'not a domain'"),
    ({"host": "*", "remoteHost": "mx.example", "remotePort": 0}, "remotePort:"),
    ({"host": "*", "remoteHost": "mx.example", "starttls": "always"}, "starttls:"),
    ({"host": "*", "remoteHost": "mx.example", "authLogin": "x"}, "authLogin: authLogin and"),
    ({"host": "*", "remoteHost": "mx.example", "starttls": "none", "authLogin": "x",
      "authPassword": SECRET}, "starttls: AUTH over a connection without TLS"),
    ({"host": "*", "remoteHost": "mx.example", "mailFrom": "nobody"}, "mailFrom: 'nobody'"),
])
def test_a_bad_route_is_refused_with_422(api: ApiServer, body: dict, raw: str) -> None:  # type: ignore[type-arg]
    response = api.session.post(api.url("/routes"), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["raw"].startswith(raw), response.json()
    assert SECRET not in response.text


def test_plaintext_auth_needs_starttls_none_and_says_so(api: ApiServer) -> None:
    response = api.session.post(api.url("/routes"), json={
        "host": f"{new_domain()}", "remoteHost": "127.0.0.1", "remotePort": 2600,
        "starttls": "none", "authLogin": "x", "authPassword": SECRET,
        "allowPlaintextAuth": True})
    assert response.status_code == 201
    assert response.json()["AllowPlaintextAuth"] is True and SECRET not in response.text
