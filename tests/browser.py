"""The web console in a real browser: Debian's Chromium, headless, driven by Selenium.

``scripts/apt-ensure chromium chromium-driver`` installs both when they are missing (the
tests skip, saying why, if that cannot work). One browser serves the whole test session;
each test starts from a browser without cookies (``browser``). The console runs in a real
stack (``console_stack``): gunicorn over HTTPS and the SMTP receiver on one data dir, with
no runner, so that what the tests send through SMTP stays in the queue.

Screenshots: :func:`screenshot` saves a PNG in the test's temp dir, as the issue asks, and
copies it to ``artifacts/screenshots/`` (or ``$TMAIL_TEST_ARTIFACTS``): pytest removes the
temp dirs of passing tests, and CI keeps that directory.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import ssl
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import REPO, ApiServer, start_api, stop
from tests.smtp_helpers import Receiver, start_receiver

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("TMAIL_TEST_ARTIFACTS", REPO / "artifacts" / "screenshots"))
WIDE, NARROW = (1280, 900), (390, 844)


def _ensure_chromium() -> None:
    if CHROMIUM.exists() and DRIVER.exists():
        return
    done = subprocess.run([str(REPO / "scripts" / "apt-ensure"), "chromium", "chromium-driver"],
                          capture_output=True, text=True, timeout=900, check=False)
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("Chromium is not installed and scripts/apt-ensure could not install it: "
                    + (done.stderr.strip() or f"exit status {done.returncode}"))


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """One headless Chromium for the session (starting one costs about a second)."""
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--no-first-run", "--disable-extensions",
                     "--proxy-server=direct://", f"--window-size={WIDE[0]},{WIDE[1]}"):
        options.add_argument(argument)
    options.accept_insecure_certs = True  # the stack's certificate is self-signed
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium):  # type: ignore[no-untyped-def]
    """The session's browser, without cookies and at 1280 px wide."""
    chromium.get("about:blank")  # no page (and no form token) of the previous test
    # WebDriver's delete_all_cookies only reaches the current page's site; this, all sites.
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    chromium.set_window_size(*WIDE)
    chromium.get_log("browser")  # forget the previous test's console messages
    return chromium


@dataclass
class ConsoleStack:
    api: ApiServer
    receiver: Receiver

    def url(self, path: str) -> str:
        return self.api.url(path)

    def send(self, sender: str, rcpts: list[str], subject: str = "Hello",
             body: str = "Hello there.\n") -> None:
        """One message through real SMTP (from 127.0.0.1, a relay network of the stack)."""
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = sender, ", ".join(rcpts), subject
        message.set_content(body)
        with self.receiver.smtp() as client:
            client.send_message(message, sender, rcpts)


@contextlib.contextmanager
def running_stack(data: Path, **extra: str) -> Iterator[ConsoleStack]:
    """gunicorn and the SMTP receiver on ``data`` (``extra``: more TMAIL_ settings)."""
    api = start_api(data, TMAIL_RELAY_NETWORKS="127.0.0.0/8", **extra)
    try:
        receiver = start_receiver(api.env, data / "receiver.log")
        try:
            yield ConsoleStack(api, receiver)
        finally:
            stop(receiver.process)
    finally:
        stop(api.process)


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    with running_stack(tmp_path_factory.mktemp("console")) as stack:
        yield stack


def sign_in(driver, stack: ConsoleStack, password: str = "admin") -> None:  # type: ignore[no-untyped-def]
    """Through the form, as a person would (on the sign-in page the browser is on, if it is
    on one: it may carry a ``next``); waits for the page that follows."""
    from selenium.webdriver.common.by import By

    if not driver.current_url.startswith(stack.url("/console/sign-in")):
        driver.get(stack.url("/console/sign-in"))
    for name, value in (("username", "admin"), ("password", password)):
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    submit(driver, field)


def submit(driver, element) -> None:  # type: ignore[no-untyped-def]
    """Submit ``element``'s form (or click it: a button, a link) and wait until the page it
    leads to has replaced this one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html").id
    if element.tag_name in ("a", "button") or element.get_attribute("type") == "submit":
        element.click()
    else:
        element.submit()

    # The new document's root is another element. (Selenium's staleness_of asks the old
    # one whether it is enabled, and Chromium may answer that mid-navigation with an
    # "unhandled inspector error" instead of "stale element": a test failed on it in CI.)
    def replaced(current) -> bool:  # type: ignore[no-untyped-def]
        return current.find_element(By.TAG_NAME, "html").id != page

    WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,)).until(replaced)


def screenshot(driver, directory: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    """A PNG of the whole page in ``directory`` (the test's tmp_path), copied to ARTIFACTS."""
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    return path


class FormClient:
    """A browser without a browser: one HTTPS connection per request from ``source``, the
    console's cookie kept, the CSRF token read from the page it last got."""

    def __init__(self, stack: ConsoleStack, source: str) -> None:
        host, port = stack.api.base_url.removeprefix("https://").rsplit(":", 1)
        self.host, self.port, self.source = host, int(port), source
        self.context = ssl.create_default_context(cafile=str(stack.api.cert))
        self.cookie = ""
        self.token = ""

    def request(self, method: str, path: str, body: str = "") -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=30, source_address=(self.source, 0))
        # Flask-WTF checks that an HTTPS form comes from our own pages, as browsers say.
        headers = {"Connection": "close", "Referer": f"https://{self.host}:{self.port}/console/"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        response.text = response.read().decode()  # type: ignore[attr-defined]
        conn.close()
        set_cookie = response.headers.get("Set-Cookie", "")
        if set_cookie:
            self.cookie = set_cookie.split(";", 1)[0]
        token = re.search(r'<input[^>]* name="csrf_token"[^>]* value="([^"]+)"',
                          response.text)  # type: ignore[attr-defined]
        if token:
            self.token = token.group(1)
        return response

    def post_form(self, path: str, fields: dict[str, str | bool]) -> http.client.HTTPResponse:
        """POST ``fields`` as a browser sends a form: with the CSRF token of the last page,
        a checked box as ``y``, an unchecked one left out."""
        pairs = [("csrf_token", self.token)] + [
            (name, "y" if value is True else value) for name, value in fields.items()
            if value is not False]
        return self.request("POST", path, urllib.parse.urlencode(pairs))


    def sign_in(self, password: str) -> http.client.HTTPResponse:
        self.request("GET", "/console/sign-in")
        return self.request("POST", "/console/sign-in",
                            f"csrf_token={self.token}&username=admin&password={password}")
