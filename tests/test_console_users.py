"""The console's users pages: in a real browser, a user's life (created after a refused quota,
its password changed and used over SMTP AUTH, deleted through the confirmation page); with
plain HTTP, the details (escaping, no action by GET, odd logins in URLs)."""

from __future__ import annotations

import html
import re
import secrets
import smtplib
import urllib.parse
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser import NARROW, WIDE, ConsoleStack, FormClient, screenshot, sign_in, submit


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}@users.test"


def api_create(stack: ConsoleStack, login: str, password: str) -> None:
    created = stack.api.session.post(
        stack.url(f"/users/{urllib.parse.quote(login, safe='@')}"),
        json={"passwd": password, "authRelay": True, "haveMailbox": True})
    assert created.status_code == 201, created.text


def api_user(stack: ConsoleStack, login: str) -> int:
    return stack.api.session.get(
        stack.url(f"/users/{urllib.parse.quote(login, safe='@')}")).status_code


def smtp_auth(stack: ConsoleStack, login: str, password: str) -> bool:
    """Whether the stack's receiver takes this login and password (AUTH after STARTTLS)."""
    with stack.receiver.smtp() as client:
        client.ehlo()
        client.starttls(context=stack.receiver.tls())
        client.ehlo()
        try:
            client.login(login, password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True


def fill(browser, values: dict[str, str | bool]) -> None:  # type: ignore[no-untyped-def]
    for name, value in values.items():
        field = browser.find_element(By.ID, name)
        if isinstance(value, bool):
            if field.is_selected() != value:
                field.click()
        else:
            field.clear()
            field.send_keys(value)


def test_a_bad_quota_is_shown_next_to_its_field_then_a_good_one_creates_the_user(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    login = unique("quota")
    refused = console_stack.api.session.post(console_stack.url(f"/users/{login}"), json={
        "passwd": "secret-1", "haveMailbox": True, "mailboxQuota": "12Q"})
    assert refused.status_code == 422
    api_reason = refused.json()["raw"].removeprefix("mailboxQuota: ")

    sign_in(browser, console_stack)
    browser.get(console_stack.url("/console/users"))
    fill(browser, {"login": login, "passwd": "secret-1", "haveMailbox": True,
                   "mailboxQuota": "12Q"})
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Create user']"))

    error = browser.find_element(By.ID, "mailboxQuota-error")
    assert error.text.rstrip(".") == api_reason  # the API's words, under the quota field
    quota = browser.find_element(By.ID, "mailboxQuota")
    assert quota.get_attribute("aria-describedby").split()[0] == "mailboxQuota-error"
    assert error.find_element(By.XPATH, "..") == quota.find_element(By.XPATH, "..")
    assert browser.find_element(By.ID, "login").get_attribute("value") == login
    assert browser.find_element(By.ID, "passwd").get_attribute("value") == ""  # not echoed
    assert browser.find_element(By.ID, "haveMailbox").is_selected()
    screenshot(browser, tmp_path, "users-bad-quota")
    browser.set_window_size(*NARROW)
    screenshot(browser, tmp_path, "users-bad-quota-390px")
    browser.set_window_size(*WIDE)

    fill(browser, {"passwd": "secret-1", "mailboxQuota": "50M"})
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Create user']"))
    assert browser.current_url == console_stack.url("/console/users")
    assert f"User {login} created." in browser.find_element(By.CSS_SELECTOR, ".alert").text
    row = browser.find_element(By.XPATH, f"//table[@id='users']//tr[td/a[text()='{login}']]")
    assert [cell.text for cell in row.find_elements(By.TAG_NAME, "td")][1:6] == [
        "yes", "no", "yes", "50M", "no"]
    screenshot(browser, tmp_path, "users-created")
    assert [entry for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"]] == []


def test_a_changed_password_works_over_smtp_and_the_user_is_deleted_after_confirmation(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Characters an address may hold and a URL must encode: the per-user links must survive.
    login = unique("a&b?c#d%e+f=g")
    api_create(console_stack, login, "first-pass")
    sign_in(browser, console_stack)
    browser.get(console_stack.url("/console/users"))
    fill(browser, {"q": login[:-11]})
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Filter']"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#users tbody tr")
    assert len(rows) == 1 and rows[0].find_element(By.TAG_NAME, "a").text == login

    submit(browser, rows[0].find_element(By.LINK_TEXT, "Password"))
    assert browser.find_element(By.TAG_NAME, "h1").text == login
    fill(browser, {"passwd": "second-pass"})
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Change password']"))
    assert f"Password of {login} changed." in browser.find_element(By.CSS_SELECTOR,
                                                                    ".alert").text
    screenshot(browser, tmp_path, "users-password-changed")
    assert smtp_auth(console_stack, login, "second-pass")
    assert not smtp_auth(console_stack, login, "first-pass")

    submit(browser, browser.find_element(By.LINK_TEXT, "Delete this user"))
    assert login in browser.find_element(By.ID, "confirm-question").text
    screenshot(browser, tmp_path, "users-delete-confirm")
    assert api_user(console_stack, login) == 200  # the confirmation page did nothing
    submit(browser, browser.find_element(By.ID, "confirm-button"))
    assert browser.current_url == console_stack.url("/console/users")
    assert f"User {login} deleted." in browser.find_element(By.CSS_SELECTOR, ".alert").text
    assert api_user(console_stack, login) == 404
    screenshot(browser, tmp_path, "users-deleted")
    assert [entry for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"]] == []


@pytest.fixture
def client(console_stack: ConsoleStack) -> FormClient:
    signed = FormClient(console_stack, "127.0.0.21")
    assert signed.sign_in("admin").status == 303
    signed.request("GET", "/console/users")  # a page with the form's token
    return signed


def test_a_login_with_markup_is_shown_as_text(client: FormClient) -> None:
    login = "<script>alert(1)</script>@users.test"
    refused = client.post_form("/console/users", {"login": login, "passwd": "secret-1"})
    assert refused.status == 422
    assert "<script>alert" not in refused.text  # type: ignore[attr-defined]
    error = re.search(r'id="login-error">([^<]*)<', refused.text)  # type: ignore[attr-defined]
    assert error and "must be an address" in html.unescape(error.group(1))
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;@users.test"' in refused.text  # type: ignore[attr-defined]


def test_a_duplicate_login_is_refused_under_the_login_field(
        client: FormClient, console_stack: ConsoleStack) -> None:
    login = unique("twice")
    api_create(console_stack, login, "secret-1")
    refused = client.post_form("/console/users", {"login": login.upper(), "passwd": "secret-1"})
    assert refused.status == 422
    error = re.search(r'id="login-error">([^<]*)<', refused.text)  # type: ignore[attr-defined]
    assert error and html.unescape(error.group(1)) == (
        "unable to create new user: UNIQUE constraint failed: users.login")


def test_get_never_changes_or_deletes_a_user(client: FormClient,
                                             console_stack: ConsoleStack) -> None:
    login = unique("stays")
    api_create(console_stack, login, "secret-1")
    query = urllib.parse.urlencode({"login": login})
    for path in (f"/console/users/delete?{query}", f"/console/users/edit?{query}"):
        shown = client.request("GET", path)
        assert shown.status == 200 and 'method="post"' in shown.text  # type: ignore[attr-defined]
    # A POST without the confirmation shows the question again and does nothing either.
    again = client.post_form(f"/console/users/delete?{query}", {})
    assert again.status == 200 and 'id="confirm-button"' in again.text  # type: ignore[attr-defined]
    assert api_user(console_stack, login) == 200 and smtp_auth(console_stack, login, "secret-1")
    missing = client.request("GET", "/console/users/edit?login=nobody%40users.test")
    assert missing.status == 404


def test_a_short_password_is_refused_with_the_apis_words(
        client: FormClient, console_stack: ConsoleStack) -> None:
    login = unique("short")
    api_create(console_stack, login, "secret-1")
    path = f"/console/users/edit?{urllib.parse.urlencode({'login': login})}"
    client.request("GET", path)
    refused = client.post_form(path, {"passwd": "abc"})
    assert refused.status == 422
    api = console_stack.api.session.put(console_stack.url(f"/users/{login}"),
                                        json={"passwd": "abc"})
    error = re.search(r'id="passwd-error">([^<]*)<', refused.text)  # type: ignore[attr-defined]
    assert error and api.json()["raw"] == "passwd: " + html.unescape(error.group(1)).rstrip(".")
    assert smtp_auth(console_stack, login, "secret-1")


def test_a_second_catchall_of_a_domain_is_refused_under_the_catchall_box(
        client: FormClient, console_stack: ConsoleStack) -> None:
    domain = f"catchall-{secrets.token_hex(3)}.test"
    first = console_stack.api.session.post(console_stack.url(f"/users/any@{domain}"), json={
        "passwd": "secret-1", "haveMailbox": True, "isCatchall": True})
    assert first.status_code == 201
    refused = client.post_form("/console/users", {
        "login": f"other@{domain}", "passwd": "secret-1", "haveMailbox": True,
        "isCatchall": True})
    assert refused.status == 422
    error = re.search(r'id="isCatchall-error">([^<]*)<', refused.text)  # type: ignore[attr-defined]
    assert error and html.unescape(error.group(1)) == (
        f"unable to create new user: domain {domain} already has a catchall")
    assert api_user(console_stack, f"other@{domain}") == 404
