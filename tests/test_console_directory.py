"""The console's directory and DKIM pages: in a real browser, a domain and an alias added,
listed, the alias deleted through the confirmation page; with plain HTTP, every create form's
refusal next to its field in the API's words (422), the route password that never comes
back, escaping, no action by GET, the DNS record without the private key."""

from __future__ import annotations

import html
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape
from selenium.webdriver.common.by import By

from tests.browser import (
    NARROW,
    WIDE,
    ConsoleStack,
    FormClient,
    running_stack,
    screenshot,
    sign_in,
    submit,
)
from tests.test_console_users import fill

BOOTSTRAP = "bootstrap-route.test"
SECRET = "never-shown-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """The usual stack, with a TMAIL_ROUTES entry (listed read-only)."""
    with running_stack(tmp_path_factory.mktemp("console-directory"),
                       TMAIL_ROUTES=f"{BOOTSTRAP}=127.0.0.1:2600",
                       TMAIL_LOCAL_DOMAINS="from-settings.test") as stack:
        yield stack


def new_domain(name: str = "dir") -> str:
    return f"{name}-{secrets.token_hex(3)}.test"


@pytest.fixture
def client(console_stack: ConsoleStack) -> FormClient:
    signed = FormClient(console_stack, "127.0.0.31")
    assert signed.sign_in("admin").status == 303
    signed.request("GET", "/console/domains")  # a page with the forms' token
    return signed


def field_error(page: str, field: str) -> str:
    """The error shown in ``field``'s own block of the form (its label, input and errors)."""
    block = next(part for part in page.split('<div class="mb-3">') if f'id="{field}"' in part)
    assert re.search(rf'aria-describedby="{field}-error[" ]', block), block
    found = re.search(rf'<div class="invalid-feedback" id="{field}-error">([^<]*)</div>', block)
    assert found, block
    return html.unescape(found.group(1))


def test_a_local_domain_and_an_alias_are_added_listed_and_the_alias_deleted(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    domain = new_domain("browser")
    sign_in(browser, console_stack)
    browser.get(console_stack.url("/console/domains"))
    assert browser.find_element(By.ID, "local").is_selected()  # the API's default: local
    fill(browser, {"name": domain})
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Add domain']"))
    assert f"Domain {domain} added (local)." in browser.find_element(By.CSS_SELECTOR,
                                                                      ".alert").text
    assert domain in browser.find_element(By.ID, "entries-table").text

    browser.find_element(By.LINK_TEXT, "Aliases").click()
    address = f"info@{domain}"
    fill(browser, {"address": address, "deliverTo": f"ann@{domain}\nbob@elsewhere.example"})
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Add alias']"))
    row = browser.find_element(By.XPATH, f"//table[@id='entries-table']//tr[td='{address}']")
    assert f"ann@{domain}\nbob@elsewhere.example" in row.text
    browser.set_window_size(*NARROW)
    screenshot(browser, tmp_path, "aliases-390px")
    assert browser.execute_script(  # readable at 390 px: only the table scrolls sideways
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    browser.set_window_size(*WIDE)

    submit(browser, row.find_element(By.LINK_TEXT, "Delete"))
    assert address in browser.find_element(By.ID, "confirm-question").text
    screenshot(browser, tmp_path, "aliases-delete-confirm")
    submit(browser, browser.find_element(By.ID, "confirm-button"))
    assert browser.current_url == console_stack.url("/console/aliases")
    assert f"Deleted the alias {address}." in browser.find_element(By.CSS_SELECTOR,
                                                                    ".alert").text
    assert address not in browser.find_element(By.ID, "entries-table").text
    assert console_stack.api.session.get(console_stack.url(f"/aliases/{address}")
                                         ).status_code == 404
    screenshot(browser, tmp_path, "aliases-deleted")
    assert csp_violations(browser) == []


def csp_violations(browser) -> list[str]:  # type: ignore[no-untyped-def]
    """What the browser refused to run or apply under the pages' Content-Security-Policy."""
    return [entry["message"] for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"]]


PAGES = ("users", "domains", "aliases", "relayips", "routes", "dkim")


def test_the_pages_label_every_field_and_need_no_inline_script_or_style(client: FormClient) -> None:
    for page in PAGES:
        for response in (client.request("GET", f"/console/{page}"),
                         client.post_form(f"/console/{page}", {})):
            text = response.text  # type: ignore[attr-defined]
            assert response.status in (200, 422), page
            assert not re.search(r"<script(?![^>]*\bsrc=)|\sstyle=|\son[a-z]+=", text), page
            controls = [tag for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", text)
                        if 'type="hidden"' not in tag]
            assert controls, page
            for tag in controls:  # every field has its <label>
                [control_id] = re.findall(r'\bid="([^"]+)"', tag)
                assert re.search(rf'<label[^>]* for="{control_id}"', text), (page, tag)


LOGIN = f"refused-{secrets.token_hex(3)}@users.test"
# page, the form's fields, the field the error belongs under, the same request to the API
REFUSALS: list[tuple[str, dict[str, Any], str, tuple[str, str, dict[str, Any]]]] = [
    ("users", {"login": LOGIN, "passwd": "secret-1", "haveMailbox": True,
               "mailboxQuota": "12Q"}, "mailboxQuota",
     ("POST", f"/users/{LOGIN}", {"passwd": "secret-1", "haveMailbox": True,
                                  "mailboxQuota": "12Q"})),
    ("users", {"login": "not an address", "passwd": "secret-1"}, "login",
     ("POST", "/users/not%20an%20address", {"passwd": "secret-1"})),
    ("users", {"login": LOGIN, "passwd": "secret-1", "isCatchall": True}, "isCatchall",
     ("POST", f"/users/{LOGIN}", {"passwd": "secret-1", "isCatchall": True})),
    ("users", {"login": LOGIN}, "passwd", ("POST", f"/users/{LOGIN}", {})),
    ("domains", {"name": "not a domain!", "local": True}, "name",
     ("POST", "/domains/not%20a%20domain!", {})),
    ("aliases", {"address": "info@example.test"}, "deliverTo",
     ("POST", "/aliases/info@example.test", {})),
    ("aliases", {"address": "info@example.test", "pipe": "cat"}, "pipe",
     ("POST", "/aliases/info@example.test", {"pipe": "cat"})),
    ("aliases", {"address": "no-at-sign", "deliverTo": "a@b.test"}, "address",
     ("POST", "/aliases/no-at-sign", {"deliverTo": ["a@b.test"]})),
    ("relayips", {"network": "192.0.2.1/24"}, "network",
     ("POST", "/relayips", {"network": "192.0.2.1/24"})),
    ("routes", {"host": "example.org", "remoteHost": "bad host!"}, "remoteHost",
     ("POST", "/routes", {"host": "example.org", "remoteHost": "bad host!"})),
    ("routes", {"host": "not a domain", "remoteHost": "mx.example"}, "host",
     ("POST", "/routes", {"host": "not a domain", "remoteHost": "mx.example"})),
    ("routes", {"host": "*", "remoteHost": "mx.example", "remotePort": "port"}, "remotePort",
     ("POST", "/routes", {"host": "*", "remoteHost": "mx.example", "remotePort": "port"})),
    ("routes", {"host": "*", "remoteHost": "mx.example", "priority": "-1"}, "priority",
     ("POST", "/routes", {"host": "*", "remoteHost": "mx.example", "priority": -1})),
    ("dkim", {"domain": "nowhere.test", "selector": "bad_selector!"}, "selector",
     ("POST", "/dkim/nowhere.test", {"selector": "bad_selector!"})),
    ("dkim", {"domain": "not-local.test"}, "domain", ("POST", "/dkim/not-local.test", {})),
]


@pytest.mark.parametrize(("page", "fields", "field", "api_request"), REFUSALS,
                         ids=[f"{page}-{field}" for page, _, field, _ in REFUSALS])
def test_a_refused_form_shows_the_apis_reason_next_to_its_field(
        client: FormClient, console_stack: ConsoleStack, page: str, fields: dict[str, Any],
        field: str, api_request: tuple[str, str, dict[str, Any]]) -> None:
    refused = client.post_form(f"/console/{page}", fields)
    assert refused.status == 422
    shown = field_error(refused.text, field)  # type: ignore[attr-defined]
    method, path, json = api_request
    api = console_stack.api.session.request(method, console_stack.url(path), json=json)
    assert 400 <= api.status_code < 500, api.text
    # The API's words: its "field: reason" (or "msg: raw" when no field is named).
    assert shown.rstrip(".") in f"{api.json()['msg']}: {api.json()['raw']}", api.json()
    for name, value in fields.items():  # what was typed stays, but never a password
        if isinstance(value, str) and name not in ("passwd", "authPassword"):
            text = refused.text  # type: ignore[attr-defined]
            assert f'value="{escape(value)}"' in text or f"{escape(value)}</textarea>" in text


def test_a_route_password_never_appears_in_a_console_page_or_the_log(
        client: FormClient, console_stack: ConsoleStack) -> None:
    host = new_domain("route")
    fields = {"host": host, "remoteHost": "smtp.relay.example", "remotePort": "587",
              "starttls": "encrypt", "authLogin": "relay-user", "authPassword": SECRET}
    client.request("GET", "/console/routes")
    answers = [client.post_form("/console/routes", {**fields, "remoteHost": "bad host!"})]
    assert answers[0].status == 422
    answers.append(client.post_form("/console/routes", fields))
    assert answers[-1].status == 303
    answers.append(client.request("GET", "/console/routes"))
    assert "relay-user" in answers[-1].text  # type: ignore[attr-defined]
    answers.append(client.post_form("/console/routes", fields))  # the same again: 409 in the API
    assert answers[-1].status == 422 and "route exists" in answers[-1].text  # type: ignore[attr-defined]
    [route] = [r for r in console_stack.api.session.get(console_stack.url("/routes")).json()
               if r["Host"] == host]
    answers.append(client.request("GET", f"/console/routes/delete?id={route['Id']}"))
    answers.append(client.post_form(f"/console/routes/delete?id={route['Id']}",
                                    {"confirm": "yes"}))
    assert answers[-1].status == 303
    log = Path(console_stack.api.env["TMAIL_DATA_DIR"]).parent / "gunicorn.log"
    assert all(SECRET not in answer.text for answer in answers)  # type: ignore[attr-defined]
    assert SECRET not in log.read_text()
    assert console_stack.api.session.get(console_stack.url(f"/routes/{route['Id']}")
                                         ).status_code == 404


def test_entries_of_the_settings_are_listed_read_only(client: FormClient) -> None:
    for path, entry in (("/console/routes", BOOTSTRAP), ("/console/domains", "from-settings.test"),
                        ("/console/relayips", "127.0.0.0/8")):
        page = client.request("GET", path).text  # type: ignore[attr-defined]
        [row] = [row for row in page.split("<tr>") if f">{entry}<" in row]
        assert "read-only" in row and "/delete" not in row, row


def test_an_alias_with_markup_is_shown_as_text(client: FormClient,
                                               console_stack: ConsoleStack) -> None:
    domain = new_domain("escape")
    assert console_stack.api.session.post(console_stack.url(f"/domains/{domain}"),
                                          json={}).status_code == 201
    pipe = "/usr/bin/printf '<script>alert(1)</script>'"
    created = client.post_form("/console/aliases", {"address": f"x@{domain}", "pipe": pipe})
    assert created.status == 303
    page = client.request("GET", "/console/aliases").text  # type: ignore[attr-defined]
    assert "<script>alert" not in page and str(escape(pipe)) in page
    refused = client.post_form("/console/aliases", {"address": "<script>alert(1)</script>",
                                                    "pipe": pipe})
    assert refused.status == 422 and "<script>alert" not in refused.text  # type: ignore[attr-defined]


def _entries(stack: ConsoleStack) -> list[tuple[str, str]]:
    """One entry of each kind through the API: (its delete page, its API URL)."""
    api, domain = stack.api.session, new_domain("get")
    assert api.post(stack.url(f"/domains/{domain}"), json={}).status_code == 201
    assert api.post(stack.url(f"/domains/{domain}-empty.test"), json={}).status_code == 201
    assert api.post(stack.url(f"/aliases/a@{domain}"), json={"deliverTo": ["b@x.test"]}
                    ).status_code == 201
    network = api.post(stack.url("/relayips"),
                       json={"network": f"198.51.100.{secrets.randbelow(250)}"}).json()
    route = api.post(stack.url("/routes"), json={"host": domain, "remoteHost": "mx.x.test"}
                     ).json()
    assert api.post(stack.url(f"/dkim/{domain}"), json={"algorithm": "ed25519"}
                    ).status_code == 201
    return [(f"/console/domains/delete?name={domain}-empty.test",
             f"/domains/{domain}-empty.test"),
            (f"/console/aliases/delete?address=a%40{domain}", f"/aliases/a@{domain}"),
            (f"/console/relayips/delete?id={network['Id']}", f"/relayips/{network['Id']}"),
            (f"/console/routes/delete?id={route['Id']}", f"/routes/{route['Id']}"),
            (f"/console/dkim/delete?domain={domain}", f"/dkim/{domain}")]


def test_get_or_an_unconfirmed_post_never_deletes(client: FormClient,
                                                  console_stack: ConsoleStack) -> None:
    for page, resource in _entries(console_stack):
        shown = client.request("GET", page)
        assert shown.status == 200 and 'id="confirm-button"' in shown.text, page  # type: ignore[attr-defined]
        again = client.post_form(page, {})
        assert again.status == 200 and 'id="confirm-button"' in again.text, page  # type: ignore[attr-defined]
        assert console_stack.api.session.get(console_stack.url(resource)).status_code == 200
    for page in ("domains", "aliases", "relayips", "routes", "dkim"):
        assert client.request("GET", f"/console/{page}").status == 200  # a form, nothing made
    assert client.request("GET", "/console/routes/delete?id=99999").status == 404
    assert client.request("GET", "/console/routes/delete?id=x").status == 404


def test_a_domain_in_use_is_not_deleted_and_says_why(client: FormClient,
                                                     console_stack: ConsoleStack) -> None:
    domain = new_domain("used")
    api = console_stack.api.session
    assert api.post(console_stack.url(f"/domains/{domain}"), json={}).status_code == 201
    assert api.post(console_stack.url(f"/aliases/a@{domain}"),
                    json={"deliverTo": ["b@x.test"]}).status_code == 201
    client.request("GET", f"/console/domains/delete?name={domain}")
    refused = client.post_form(f"/console/domains/delete?name={domain}", {"confirm": "yes"})
    assert refused.status == 409 and f"alias a@{domain}" in refused.text  # type: ignore[attr-defined]
    assert api.get(console_stack.url(f"/domains/{domain}")).status_code == 200


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_dkim_shows_the_dns_record_and_never_the_private_key(
        client: FormClient, console_stack: ConsoleStack, algorithm: str) -> None:
    domain = new_domain("dkim")
    client.request("GET", "/console/domains")
    assert client.post_form("/console/domains", {"name": domain, "local": True}).status == 303
    client.request("GET", "/console/dkim")
    made = client.post_form("/console/dkim", {"domain": domain, "algorithm": algorithm,
                                              "selector": "s1"})
    assert made.status == 303 and made.headers["Location"].endswith(f"#dkim-{domain}")
    page = client.request("GET", "/console/dkim").text  # type: ignore[attr-defined]
    key = console_stack.api.session.get(console_stack.url(f"/dkim/{domain}")).json()
    assert f'value="s1._domainkey.{domain}"' in page
    assert f">{escape(key['DnsValue'])}</textarea>" in page
    assert f"k={algorithm}; p=" in page
    assert "PRIVATE KEY" not in page and "BEGIN" not in page
    again = client.post_form("/console/dkim", {"domain": domain, "algorithm": algorithm,
                                               "selector": "s1"})
    assert again.status == 422 and "selector exists" in field_error(again.text, "selector")  # type: ignore[attr-defined]

    query = urllib.parse.urlencode({"domain": domain})
    confirm = client.request("GET", f"/console/dkim/delete?{query}")
    assert confirm.status == 200 and "no longer signed" in confirm.text  # type: ignore[attr-defined]
    gone = client.post_form(f"/console/dkim/delete?domain={domain}", {"confirm": "yes"})
    assert gone.status == 303
    assert console_stack.api.session.get(console_stack.url(f"/dkim/{domain}")).status_code == 404
