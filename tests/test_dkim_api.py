"""``/dkim`` through the real gunicorn, on both engines: keys made, shown, rotated, listed and
deleted, the record to publish verifying what the key signs, and the private key nowhere
outside the database (responses, the OpenAPI document, the server's log, the CLI)."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys

import pytest
from sqlalchemy import select

from tests.conftest import REPO, ApiServer, api_session
from tests.dkim_helpers import verifies
from tmail.db import Database
from tmail.dkim.keys import dkim_keys


def new_domain(api: ApiServer) -> str:
    name = f"k{secrets.token_hex(4)}.example"
    assert api.session.post(api.url(f"/domains/{name}"), json={"local": True}).status_code == 201
    return name


def private_keys(api: ApiServer, domain: str) -> list[str]:
    """The private keys as stored, cut to pieces any leak would contain."""
    database = Database(api.config.database)
    try:
        with database.connect() as conn:
            stored = list(conn.scalars(select(dkim_keys.c.private_key).where(
                dkim_keys.c.domain == domain)))
    finally:
        database.dispose()
    assert stored
    pieces = []
    for text in stored:
        body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
        pieces += [body[i:i + 24] for i in range(0, len(body) - 24, 24)]
    return pieces


def test_a_key_is_made_shown_and_its_record_verifies_what_it_signs(engine_api: ApiServer) -> None:
    api = engine_api
    domain = new_domain(api)
    made = api.session.post(api.url(f"/dkim/{domain}"))  # no body: RSA, a dated selector
    assert made.status_code == 201, made.text
    assert made.headers["Location"].endswith(f"/dkim/{domain}")
    key = made.json()
    assert list(key) == ["Domain", "Selector", "Algorithm", "PublicKey", "DnsName", "DnsValue",
                         "CreatedAt", "Active"]
    assert (key["Domain"], key["Algorithm"], key["Active"]) == (domain, "rsa-sha256", True)
    assert key["Selector"].startswith("tmail2") and len(key["Selector"]) == len("tmail202612")
    assert key["DnsName"] == f"{key['Selector']}._domainkey.{domain}"
    assert key["DnsValue"].startswith('"v=DKIM1; k=rsa; p=')
    assert api.session.get(api.url(f"/dkim/{domain}")).json() == key
    assert api.session.get(api.url(f"/dkim/{domain.upper()}")).json() == key

    # the public half published is the one of the stored private key: sign with it here
    import dkim

    database = Database(api.config.database)
    try:
        with database.connect() as conn:
            private = conn.scalar(select(dkim_keys.c.private_key).where(
                dkim_keys.c.domain == domain))
    finally:
        database.dispose()
    message = f"From: a@{domain}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    signature = dkim.sign(message, key["Selector"].encode(), domain.encode(), private.encode())
    assert verifies(signature + message, [(key["DnsName"], key["DnsValue"])])


def test_rotation_lists_both_keys_the_new_one_active_and_delete_stops_signing(
        engine_api: ApiServer) -> None:
    api = engine_api
    domain = new_domain(api)
    assert api.session.post(api.url(f"/dkim/{domain}"), json={"selector": "old"}).ok
    rotated = api.session.post(api.url(f"/dkim/{domain}"),
                               json={"algorithm": "ed25519", "selector": "New"})
    assert rotated.status_code == 201, rotated.text
    assert rotated.json()["DnsValue"] == f"v=DKIM1; k=ed25519; p={rotated.json()['PublicKey']}"
    assert len(base64.b64decode(rotated.json()["PublicKey"])) == 32
    assert api.session.get(api.url(f"/dkim/{domain}")).json()["Selector"] == "new"
    listed = [(k["Selector"], k["Algorithm"], k["Active"])
              for k in api.session.get(api.url("/dkim")).json() if k["Domain"] == domain]
    assert listed == [("new", "ed25519-sha256", True), ("old", "rsa-sha256", False)]
    gone = api.session.delete(api.url(f"/dkim/{domain}"))
    assert (gone.status_code, gone.content) == (204, b"")
    assert api.session.get(api.url(f"/dkim/{domain}")).status_code == 404
    assert api.session.delete(api.url(f"/dkim/{domain}")).status_code == 404


@pytest.mark.parametrize(("path", "body", "status", "raw"), [
    ("/dkim/not-local.example", {}, 404, "not a local domain"),
    ("/dkim/bad..name", {}, 422, "domain:"),
    ("/dkim/{domain}", {"algorithm": "dsa"}, 422, "algorithm:"),
    ("/dkim/{domain}", {"selector": "under_score"}, 422, "selector:"),
    ("/dkim/{domain}", {"selector": "x" * 64}, 422, "selector:"),
    ("/dkim/{domain}", {"privateKey": "-----BEGIN PRIVATE KEY-----"}, 422, "privateKey:"),
    ("/dkim/{domain}", {"selector": "taken"}, 409, "taken._domainkey."),
])
def test_a_bad_request_gets_a_clear_error(api: ApiServer, path: str, body: dict,  # type: ignore[type-arg]
                                          status: int, raw: str) -> None:
    domain = new_domain(api)
    assert api.session.post(api.url(f"/dkim/{domain}"), json={"selector": "taken",
                                                              "algorithm": "ed25519"}).ok
    response = api.session.post(api.url(path.format(domain=domain)), json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"msg", "raw"} and raw in response.json()["raw"]


def test_malformed_json_is_400_and_no_credentials_401(api: ApiServer) -> None:
    domain = new_domain(api)
    assert api.session.post(api.url(f"/dkim/{domain}"), data=b"[1,",
                            headers={"Content-Type": "application/json"}).status_code == 400
    anonymous = api_session(api.cert, auth=None)
    assert anonymous.get(api.url("/dkim")).status_code == 401
    assert anonymous.post(api.url(f"/dkim/{domain}")).status_code == 401
    assert api.session.get(api.url(f"/dkim/{domain}")).status_code == 404


def test_the_private_key_leaves_the_server_nowhere(api: ApiServer) -> None:
    domain = new_domain(api)
    answers = [api.session.post(api.url(f"/dkim/{domain}"), json={"selector": "rsa"}).text,
               api.session.post(api.url(f"/dkim/{domain}"),
                                json={"selector": "ed", "algorithm": "ed25519"}).text,
               api.session.get(api.url(f"/dkim/{domain}")).text,
               api.session.get(api.url("/dkim")).text]
    document = api.session.get(api.url("/openapi.json")).text
    cli = [subprocess.run([sys.executable, "-m", "tmail", "dkim", *args], cwd=REPO, env=api.env,
                          capture_output=True, text=True, timeout=60)
           for args in (["show", domain], ["list"], ["list", "--json"])]
    assert all(done.returncode == 0 for done in cli), [done.stderr for done in cli]
    log = (api.config.data_dir.parent / "gunicorn.log").read_text()
    pieces = private_keys(api, domain)
    for text in [*answers, document, log, *(done.stdout + done.stderr for done in cli)]:
        assert not [piece for piece in pieces if piece in text]
        assert "PRIVATE KEY-----" not in text
    schemas = json.loads(document)["components"]["schemas"]
    for name in ("DkimKey", "DkimCreate"):
        assert not [field for field in schemas[name]["properties"] if "priv" in field.lower()]


def test_the_cli_adds_shows_and_deletes_keys(api: ApiServer) -> None:
    domain = new_domain(api)

    def tmail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tmail", "dkim", *args], cwd=REPO,
                              env=api.env, capture_output=True, text=True, timeout=60)

    added = tmail("add", domain, "--algorithm", "ed25519", "--selector", "cli1")
    assert added.returncode == 0, added.stderr
    record = f'cli1._domainkey.{domain}. IN TXT ( "v=DKIM1; k=ed25519; p='
    assert record in added.stdout and record in tmail("show", domain).stdout
    assert api.session.get(api.url(f"/dkim/{domain}")).json()["Selector"] == "cli1"
    refused = tmail("add", "not-local.example")
    assert refused.returncode == 1 and "not a local domain" in refused.stderr
    assert tmail("del", domain).returncode == 0
    assert tmail("del", domain).returncode == 1
    assert tmail("show", domain).returncode == 1
