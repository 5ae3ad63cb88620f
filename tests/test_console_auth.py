"""Signing in to the web console, in a real browser and with raw HTTP: the form, the session
cookie, sign-out, CSRF, the shared throttle and the security headers."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.by import By

from app.throttle import MAX_FAILURES
from tests.browser import ConsoleStack, FormClient, screenshot, sign_in, submit
from tests.test_admin_auth import get_users


def test_a_wrong_password_is_refused_and_the_right_one_opens_the_overview(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sign_in(browser, console_stack, password="not-the-password")
    assert "/console/sign-in" in browser.current_url
    error = browser.find_element(By.ID, "sign-in-error")
    assert error.text == "Wrong user name or password."
    assert browser.find_elements(By.CSS_SELECTOR, "nav[aria-label=Console]") == []
    screenshot(browser, tmp_path, "sign-in-refused")

    sign_in(browser, console_stack)
    assert browser.current_url == console_stack.url("/console/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    screenshot(browser, tmp_path, "signed-in")


def test_a_signed_out_browser_is_sent_to_the_sign_in_page_and_back(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(console_stack.url("/console/?from=here"))
    assert browser.current_url.startswith(console_stack.url("/console/sign-in?next="))
    sign_in(browser, console_stack)
    assert browser.current_url == console_stack.url("/console/?from=here")

    cookie = browser.get_cookie("tmail_console")
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Sign out']"))
    assert browser.current_url == console_stack.url("/console/sign-in")
    # The old cookie, put back, is worth nothing: the sign-in ended on the server.
    browser.add_cookie({k: cookie[k] for k in ("name", "value", "path", "secure", "httpOnly")})
    browser.get(console_stack.url("/console/"))
    assert "/console/sign-in" in browser.current_url
    screenshot(browser, tmp_path, "signed-out")


def test_the_session_cookie_is_secure_httponly_samesite_strict_and_expires(
        console_stack: ConsoleStack) -> None:
    client = FormClient(console_stack, "127.0.0.11")
    response = client.sign_in("admin")
    assert response.status == 303 and response.headers["Location"] == "/console/"
    attributes = [part.strip().lower() for part in response.headers["Set-Cookie"].split(";")]
    assert {"secure", "httponly", "samesite=strict", "path=/console"} <= set(attributes)
    assert any(part.startswith("expires=") for part in attributes)
    assert client.request("GET", "/console/").status == 200


def test_a_form_posted_without_its_csrf_token_is_refused(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sign_in(browser, console_stack)
    # WebDriver's scripts are not bound by the page's CSP: take the token out of the form.
    browser.execute_script("document.querySelector('form[action$=\"/sign-out\"] "
                           "input[name=csrf_token]').remove()")
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Sign out']"))
    assert "400: form refused" in browser.find_element(By.TAG_NAME, "h1").text
    assert "CSRF token is missing" in browser.page_source
    screenshot(browser, tmp_path, "csrf-refused")
    browser.get(console_stack.url("/console/"))  # still signed in: the forged post did nothing
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"

    client = FormClient(console_stack, "127.0.0.12")
    assert client.sign_in("admin").status == 303
    assert client.request("POST", "/console/sign-out", "csrf_token=forged").status == 400
    assert client.request("GET", "/console/").status == 200


def test_sign_in_failures_share_the_apis_throttle(console_stack: ConsoleStack) -> None:
    api = console_stack.api
    # Failures on the API count against the form ...
    for _ in range(MAX_FAILURES):
        assert get_users(api.base_url, api.cert, "guess", "127.0.0.13").status == 401
    client = FormClient(console_stack, "127.0.0.13")
    refused = client.sign_in("admin")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in refused.text  # type: ignore[attr-defined]
    # ... and failures on the form against the API.
    client = FormClient(console_stack, "127.0.0.14")
    for _ in range(MAX_FAILURES):
        assert client.sign_in("guess").status == 401
    assert get_users(api.base_url, api.cert, "admin", "127.0.0.14").status == 429
    assert FormClient(console_stack, "127.0.0.15").sign_in("admin").status == 303


def test_pages_carry_a_strict_content_security_policy(console_stack: ConsoleStack) -> None:
    client = FormClient(console_stack, "127.0.0.16")
    for response in (client.request("GET", "/console/sign-in"),
                     client.request("GET", "/console/no-such-page")):
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Content-Type"].startswith("text/html")
    assert "<script>" not in response.text  # type: ignore[attr-defined]  # no inline script


def test_a_next_parameter_never_leads_off_the_console(console_stack: ConsoleStack) -> None:
    # A line end in it would split the Location header: refused, never a 500.
    for target in ("https://evil.example/", "//evil.example/", "/console//evil.example",
                   "/queue", "/console/%0d%0aSet-Cookie:%20x=1", "/console/%09/evil.example",
                   "/console/%5c%5cevil.example"):
        client = FormClient(console_stack, "127.0.0.17")
        client.request("GET", f"/console/sign-in?next={target}")
        response = client.request("POST", f"/console/sign-in?next={target}",
                                  f"csrf_token={client.token}&username=admin&password=admin")
        assert response.headers["Location"] == "/console/", target
