"""The console's overview in a real browser: records by status and the heat map of what real
SMTP queued, and the chart of what a real runner delivered to a real sink (sent, deferred,
bounced), agreeing with the Prometheus counters."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser import NARROW, ConsoleStack, screenshot, sign_in
from tests.conftest import REPO, start_api, stop
from tests.sink import Script, Sink
from tests.smtp_helpers import start_receiver
from tests.test_console_auth import FormClient
from tests.test_metrics import samples
from tmail.queue.summary import BUCKET_NAMES

STATUSES = ("total", "in-delivery", "scheduled", "held", "discarding", "bouncing")


def counts(driver) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {name: int(driver.find_element(By.ID, f"count-{name}").text) for name in STATUSES}


def heat_rows(driver) -> dict[str, list[tuple[int, str]]]:  # type: ignore[no-untyped-def]
    """The heat map by domain: (count, class) of the total column and of each age bucket."""
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#heat-map tbody tr"):
        host = row.find_element(By.TAG_NAME, "th").text
        rows[host] = [(int(cell.text), cell.get_attribute("class") or "")
                      for cell in row.find_elements(By.TAG_NAME, "td")]
    return rows


def follow(driver, link) -> None:  # type: ignore[no-untyped-def]
    """Click a link and wait until its page has replaced this one."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    link.click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(page))


def chart_totals(driver) -> dict[str, dict[str, int]]:  # type: ignore[no-untyped-def]
    """The chart's totals as its aria-label, its legend and its table say them."""
    label = driver.find_element(By.ID, "chart").get_attribute("aria-label")
    said = {name: int(n) for n, name in re.findall(r"(\d+) (sent|deferred|bounced)", label)}
    return {"label": said, **{
        where: {name: int(driver.find_element(By.ID, f"{where}-total-{name}").text)
                for name in ("sent", "deferred", "bounced")}
        for where in ("chart", "table")}}


def test_the_overview_counts_records_by_status_and_maps_them_by_domain_and_age(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sign_in(browser, console_stack)
    before = counts(browser)
    tag = secrets.token_hex(3)
    sent = {f"big-{tag}.test": 3, f"mid-{tag}.test": 2, f"one-{tag}.test": 1}
    for domain, number in sent.items():
        for n in range(number):
            console_stack.send("s@sender.test", [f"r{n}@{domain}"])
    api = console_stack.api
    [record] = api.session.get(api.url(f"/queue?host=one-{tag}.test")).json()
    assert api.session.post(api.url(f"/queue/hold/{record['Id']}")).status_code == 200

    browser.get(console_stack.url("/console/"))
    after = counts(browser)
    assert {name: after[name] - before[name] for name in STATUSES} == {
        "total": 6, "in-delivery": 0, "scheduled": 5, "held": 1, "discarding": 0, "bouncing": 0}
    assert browser.find_element(By.ID, "oldest-age").text != "-"

    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#heat-map thead th")]
    assert headers == ["domain", "total", *BUCKET_NAMES]
    rows = heat_rows(browser)
    for domain, number in sent.items():
        total, first, *older = rows[domain]
        assert (total[0], first[0]) == (number, number)  # all of them younger than 5 minutes
        assert [count for count, _ in older] == [0] * (len(BUCKET_NAMES) - 1)
        assert all("heat-0" in shade for _, shade in older)
    levels = [int(re.search(r"heat-(\d)", rows[d][1][1]).group(1)) for d in sent]
    assert levels == sorted(levels, reverse=True) and levels[-1] >= 1
    assert rows["TOTAL"][0][0] == after["total"]
    # Nothing on the page broke the Content-Security-Policy (no inline style, no script).
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
            and "/favicon.ico" not in entry["message"]] == []
    screenshot(browser, tmp_path, "overview")

    # Once the Queue page exists (in the navigation bar), each domain leads to it, filtered.
    queue_page = browser.find_elements(By.CSS_SELECTOR, "nav a[href='/console/queue']")
    links = browser.find_elements(By.LINK_TEXT, f"big-{tag}.test")
    assert len(links) == len(queue_page)
    if links:
        follow(browser, links[0])
        assert browser.current_url == console_stack.url(f"/console/queue?host=big-{tag}.test")
        shown = browser.find_element(By.TAG_NAME, "main").text
        assert all(f"r{n}@big-{tag}.test" in shown for n in range(3)), shown


def test_the_overview_fits_a_narrow_screen(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    console_stack.send("s@sender.test", [f"r@a-rather-long-subdomain-{secrets.token_hex(3)}"
                                         ".of-a-destination.example"])
    sign_in(browser, console_stack)
    browser.set_window_size(*NARROW)
    browser.get(console_stack.url("/console/"))
    viewport = browser.execute_script("return document.documentElement.clientWidth")
    # Nothing makes the page scroll sideways: wide tables scroll in their own box.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= viewport
    chart = browser.find_element(By.ID, "chart")
    assert 0 < chart.size["width"] <= viewport
    assert browser.find_element(By.CSS_SELECTOR, ".table-responsive #heat-map").is_displayed()
    screenshot(browser, tmp_path, "overview-narrow")
    browser.execute_script("arguments[0].scrollIntoView({behavior: 'instant'})", chart)
    screenshot(browser, tmp_path, "overview-narrow-chart")


@pytest.mark.parametrize(("query", "status"), [
    ("?hours=1", 200), ("?hours=24", 200), ("?hours=5", 400), ("?hours=six", 400),
    ("?hours=6&next=/console/", 200),  # other parameters are not the page's business
])
def test_the_chart_period_is_one_of_the_offered_ones(
        console_stack: ConsoleStack, query: str, status: int) -> None:
    client = FormClient(console_stack, "127.0.0.41")
    assert client.sign_in("admin").status == 303
    response = client.request("GET", f"/console/{query}")
    assert response.status == status
    if status == 400:
        assert "400: bad query parameter" in response.text  # type: ignore[attr-defined]
        assert "hours" in response.text  # type: ignore[attr-defined]


@pytest.fixture
def runner_stack(tmp_path: Path) -> Iterator[tuple[ConsoleStack, Sink]]:
    """A stack whose remote mail goes to a real sink on loopback (TMAIL_ROUTES), and whose
    runner the test starts itself (``--once``, as cron does)."""
    with Sink() as sink:
        api = start_api(tmp_path, TMAIL_RELAY_NETWORKS="127.0.0.0/8", TMAIL_ROUTES=sink.route)
        try:
            receiver = start_receiver(api.env, tmp_path / "receiver.log")
            try:
                yield ConsoleStack(api, receiver), sink
            finally:
                stop(receiver.process)
        finally:
            stop(api.process)


def test_the_chart_shows_what_the_runner_sent_deferred_and_bounced(
        browser, runner_stack: tuple[ConsoleStack, Sink], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stack, sink = runner_stack
    # From an empty start: no records, no counters, and a page that says so.
    sign_in(browser, stack)
    assert counts(browser)["total"] == 0 and browser.find_element(By.ID, "oldest-age").text == "-"
    assert browser.find_element(By.ID, "heat-empty").text == "The queue is empty."
    assert chart_totals(browser)["label"] == {"sent": 0, "deferred": 0, "bounced": 0}
    assert "No deliveries in this period" in browser.find_element(By.ID, "chart").text
    screenshot(browser, tmp_path, "overview-empty")

    sink.handler.script = Script(rcpt={
        **{f"later{n}@remote.test": "451 4.3.0 try again later" for n in range(2)},
        **{f"gone{n}@remote.test": "550 5.1.1 no such user" for n in range(2)}})
    for rcpt in ("ok0", "ok1", "ok2", "later0", "later1", "gone0", "gone1"):
        stack.send("s@sender.test", [f"{rcpt}@remote.test"])
    for _ in range(2):  # the second pass delivers the two bounces' DSNs to the sender
        subprocess.run([sys.executable, "-m", "queue_runner", "--once"], cwd=REPO,
                       env=stack.api.env, check=True, timeout=60, capture_output=True)
    assert sorted(rcpt for m in sink.messages for rcpt in m.rcpt_tos) == [
        "ok0@remote.test", "ok1@remote.test", "ok2@remote.test",
        "s@sender.test", "s@sender.test"]

    expected = {"sent": 5, "deferred": 2, "bounced": 2}
    found = samples(stack.api)
    assert {result: sum(value for (name, labels), value in found.items()
                        if name == "tmail_deliveries_total" and ("result", result) in labels)
            for result in expected} == expected  # what the Prometheus counters say

    browser.get(stack.url("/console/"))
    assert chart_totals(browser) == {"label": expected, "chart": expected, "table": expected}
    assert counts(browser)["scheduled"] == 2  # the deferred ones wait for their retry
    assert heat_rows(browser)["remote.test"][0][0] == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart circle.marker")) >= 3
    screenshot(browser, tmp_path, "overview-deliveries")

    follow(browser, browser.find_element(By.LINK_TEXT, "24 h"))
    assert browser.current_url == stack.url("/console/?hours=24")
    assert "the last 24 hours" in browser.find_element(By.ID, "chart").get_attribute("aria-label")
    assert chart_totals(browser)["table"] == expected
