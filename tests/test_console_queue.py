"""The Queue and Message pages of the web console: in a real browser with mail queued through
real SMTP (filter, hold and release, bulk discard, download, escaping), and with plain HTTP
for the details (405 on GET, filter errors, cursor paging, 404, outcomes)."""

from __future__ import annotations

import html
import re
import secrets
import urllib.parse
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser import ConsoleStack, FormClient, screenshot, sign_in, submit
from tests.conftest import wait_until
from tmail.queue import Envelope, QueueStore, RecordFilter, Status
from tmail.queue.record import now

RAW = b"From: a@b.example\r\nSubject: paging\r\n\r\nbody\r\n"


def unique(label: str) -> str:
    """A destination domain of this test alone (the stack is shared by the module)."""
    return f"{label}-{secrets.token_hex(3)}.example"


def ids_of(store: QueueStore, host: str) -> list[int]:
    return [data["Id"] for data, _ in store.iter_raw_records(RecordFilter(host=host))]


def queue(stack: ConsoleStack) -> QueueStore:
    return stack.receiver.queue


def signed_in(stack: ConsoleStack, source: str) -> FormClient:
    client = FormClient(stack, source)
    assert client.sign_in("admin").status == 303
    return client


def follow(client: FormClient, response) -> object:  # type: ignore[no-untyped-def]
    """The page a 303 leads to."""
    assert response.status == 303, response.text
    return client.request("GET", response.headers["Location"])


# --- in a real browser -----------------------------------------------------------------------

def open_queue(driver, stack: ConsoleStack, query: str = "") -> None:  # type: ignore[no-untyped-def]
    driver.get(stack.url(f"/console/queue{query}"))
    if "/console/sign-in" in driver.current_url:
        sign_in(driver, stack)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Queue"


def follow_link(driver, text: str) -> None:  # type: ignore[no-untyped-def]
    """Click the link ``text`` (``submit`` would submit the form around it) and wait for
    the page it leads to."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.LINK_TEXT, text).click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(page))


def rows(driver) -> list[tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """(Id, from, to, host, ..., status) of each row shown."""
    return [tuple(cell.text for cell in row.find_elements(By.TAG_NAME, "td")[1:])
            for row in driver.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr[id]")]


def test_filtering_by_host_shows_only_that_hosts_rows(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wanted, other = unique("wanted"), unique("other")
    for n, host in enumerate((wanted, other, wanted)):
        console_stack.send(f"s{n}@client.example", [f"r{n}@{host}"])
    open_queue(browser, console_stack)
    assert {row[3] for row in rows(browser)} >= {wanted, other}  # unfiltered: both

    field = browser.find_element(By.ID, "filter-host")
    field.send_keys(wanted)
    submit(browser, browser.find_element(By.ID, "filter-button"))
    shown = rows(browser)
    assert [row[3] for row in shown] == [wanted, wanted]
    assert [int(row[0]) for row in shown] == sorted(ids_of(queue(console_stack), wanted),
                                                    reverse=True)
    assert [row[2] for row in shown] == [f"r2@{wanted}", f"r0@{wanted}"]
    assert shown[0][-1] == "scheduled" and shown[0][1] == "s2@client.example"
    # console.js's "select every row" (hidden without JavaScript), within the page's CSP.
    boxes = browser.find_elements(By.CSS_SELECTOR, "input.row-select")
    browser.find_element(By.ID, "select-all").click()
    assert [box.is_selected() for box in boxes] == [True, True]
    boxes[0].click()
    assert browser.execute_script("return document.getElementById('select-all').indeterminate")
    assert not [entry for entry in browser.get_log("browser")
                if "Content Security Policy" in entry["message"]]
    screenshot(browser, tmp_path, "queue-filtered")
    browser.set_window_size(390, 844)
    screenshot(browser, tmp_path, "queue-filtered-narrow")


def test_a_message_held_from_the_queue_is_released_from_its_page(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host = unique("hold")
    console_stack.send("sender@client.example", [f"bob@{host}", f"ann@{host}"])
    store = queue(console_stack)
    bob, ann = sorted(ids_of(store, host))
    open_queue(browser, console_stack, f"?host={host}")
    browser.find_element(By.ID, f"select-{bob}").click()
    submit(browser, browser.find_element(By.ID, "rows-hold"))
    assert browser.find_element(By.CSS_SELECTOR, ".alert").text == "1 held"
    assert {row[0]: row[-1] for row in rows(browser)} == {str(bob): "held", str(ann): "scheduled"}
    assert store.get(bob).status == Status.HELD  # type: ignore[union-attr]
    screenshot(browser, tmp_path, "queue-held")

    follow_link(browser, str(bob))
    assert browser.find_element(By.ID, "message-status").text == "held"
    assert browser.find_element(By.ID, "field-Status").text == "4 (held)"
    submit(browser, browser.find_element(By.ID, "action-release"))
    assert browser.current_url == console_stack.url(f"/console/queue/{bob}")
    assert browser.find_element(By.CSS_SELECTOR, ".alert").text == "1 released"
    assert browser.find_element(By.ID, "message-status").text == "scheduled"
    assert store.get(bob).status == Status.SCHEDULED  # type: ignore[union-attr]
    screenshot(browser, tmp_path, "message-released")


def test_bulk_discard_by_host_confirms_the_count_then_removes_only_that_host(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    doomed, kept = unique("doomed"), unique("kept")
    for n in range(3):
        console_stack.send("sender@client.example", [f"r{n}@{doomed}"])
    console_stack.send("sender@client.example", [f"r@{kept}"])
    store = queue(console_stack)
    assert len(ids_of(store, doomed)) == 3
    open_queue(browser, console_stack, f"?host={doomed}")
    Select(browser.find_element(By.ID, "bulk-action")).select_by_value("discard")
    submit(browser, browser.find_element(By.ID, "bulk-button"))
    question = browser.find_element(By.ID, "confirm-question").text
    assert question == "Discard the 3 records that match the filter now?"
    assert f"Filter: host {doomed}" in browser.page_source
    screenshot(browser, tmp_path, "bulk-discard-confirm")

    submit(browser, browser.find_element(By.ID, "confirm-button"))
    assert browser.find_element(By.CSS_SELECTOR, ".alert").text == (
        "Bulk discard: 3 matched, 3 discarded, 0 skipped.")
    assert browser.find_element(By.ID, "no-rows").text == "No records match."
    assert ids_of(store, doomed) == [] and len(ids_of(store, kept)) == 1
    screenshot(browser, tmp_path, "bulk-discard-done")


def test_a_message_page_shows_the_record_and_its_headers_and_downloads_the_message(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host = unique("download")
    console_stack.send("sender@client.example", [f"carol@{host}"], subject="Quarterly report",
                       body="The figures.\n")
    store = queue(console_stack)
    [record_id] = ids_of(store, host)
    open_queue(browser, console_stack, f"?host={host}")
    follow_link(browser, str(record_id))
    assert browser.find_element(By.ID, "field-RcptTo").text == f"carol@{host}"
    assert browser.find_element(By.ID, "field-Host").text == host
    record = store.get(record_id)
    assert record is not None
    assert browser.find_element(By.ID, "field-Uuid").text == record.uuid
    headers = browser.find_element(By.ID, "message-headers").text
    assert "Subject: Quarterly report" in headers and "Received: from" in headers
    assert "The figures." not in headers
    screenshot(browser, tmp_path, "message")

    # Chromium saves downloads where CDP says; the file is compared with the queued bytes.
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.find_element(By.ID, "download").click()
    saved = tmp_path / f"{record_id}.eml"
    assert wait_until(lambda: saved.exists() and not list(tmp_path.glob("*.crdownload")))
    assert saved.read_bytes() == store.read_raw(record_id)
    assert b"The figures." in saved.read_bytes()


def test_script_in_a_subject_and_a_from_shows_as_text(
        browser, console_stack: ConsoleStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host = unique("xss")
    message = EmailMessage()
    message["From"] = '"<script>alert(1)</script>" <mallory@client.example>'
    message["To"] = f"victim@{host}"
    message["Subject"] = "<script>alert(2)</script><img src=x>"
    message.set_content("hello\n")
    envelope_from = '"<script>alert(3)</script>"@client.example'
    with console_stack.receiver.smtp() as client:
        client.send_message(message, envelope_from, [f"victim@{host}"])
    [record_id] = ids_of(queue(console_stack), host)

    open_queue(browser, console_stack, f"?host={host}")
    assert rows(browser)[0][1] == envelope_from  # the text, as it is
    browser.get(console_stack.url(f"/console/queue/{record_id}"))
    headers = browser.find_element(By.ID, "message-headers").text
    assert "Subject: <script>alert(2)</script><img src=x>" in headers
    assert 'From: "<script>alert(1)</script>" <mallory@client.example>' in headers
    source = browser.page_source
    assert "&lt;script&gt;alert(2)&lt;/script&gt;&lt;img src=x&gt;" in source
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    scripts = browser.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src").rsplit("/", 1)[-1] for s in scripts] == ["console.js"]
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert not [entry for entry in browser.get_log("browser")
                if "Content Security Policy" in entry["message"]]
    screenshot(browser, tmp_path, "message-escaped")


# --- with plain HTTP -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/console/queue/act", "/console/queue/bulk"])
def test_an_action_url_refuses_get(console_stack: ConsoleStack, path: str) -> None:
    client = signed_in(console_stack, "127.0.0.31")
    response = client.request("GET", path + "?action=discard&id=1&all=true&confirm=yes")
    assert response.status == 405 and "POST" in response.headers["Allow"]
    assert response.headers["Content-Type"].startswith("text/html")


def test_a_bad_filter_is_a_422_with_each_error_next_to_its_field(
        console_stack: ConsoleStack) -> None:
    client = signed_in(console_stack, "127.0.0.32")
    response = client.request("GET", "/console/queue?status=9&older_than=abc&host=x.example")
    text = response.text  # type: ignore[attr-defined]
    assert response.status == 422
    assert re.search(r'id="filter-status-error">Must be one of: 0, 1, 2, 3, 4\.<', text)
    assert re.search(r'id="filter-older_than-error">Not a valid number\.<', text)
    assert 'aria-describedby="filter-older_than-error filter-older_than-help"' in text
    assert 'value="x.example"' in text  # what was typed stays in the form
    assert 'id="queue-table"' not in text and 'id="bulk-form"' not in text
    unknown = client.request("GET", "/console/queue?limit=7&colour=red")
    assert unknown.status == 422
    assert "colour: Unknown field." in unknown.text  # type: ignore[attr-defined]
    assert "Must be one of: 50, 100, 200." in unknown.text  # type: ignore[attr-defined]


def fill_paged(store: QueueStore, host: str, count: int) -> dict[int, object]:
    """``count`` records for ``host`` straight into the store, due at seven distinct times
    (so that most due times are shared and the Id breaks the ties); Id -> due time."""
    [records] = store.enqueue_many([Envelope(RAW, "a@b.example",
                                             [f"r{n}@{host}" for n in range(count)])])
    assert not isinstance(records, Exception)
    base, due = now().replace(microsecond=123456), {}
    for n, record in enumerate(records):
        moment = base + timedelta(minutes=(n * 5) % 7)
        with store.locked(record.id) as locked:
            assert locked is not None
            locked.write(locked.record.evolve(next_delivery_at=moment))
        due[record.id] = moment
    return due


def walk(client: FormClient, query: str) -> tuple[list[int], int]:
    """Every page from ``query`` on, by its "Next page" links: the Ids, and the pages."""
    seen, pages, path = [], 0, f"/console/queue?{query}"
    while path:
        response = client.request("GET", path)
        assert response.status == 200
        text = response.text  # type: ignore[attr-defined]
        seen += [int(i) for i in re.findall(r'name="id" value="(\d+)"', text)]
        pages += 1
        link = re.search(r'<a href="([^"]+)" id="next-page"', text)
        path = html.unescape(link.group(1)) if link else ""
    return seen, pages


def test_cursor_paging_gives_every_record_once_in_both_orders(
        console_stack: ConsoleStack) -> None:
    host = unique("paging")
    due = fill_paged(queue(console_stack), host, 230)
    client = signed_in(console_stack, "127.0.0.33")

    newest, pages = walk(client, f"host={host}")
    assert newest == sorted(due, reverse=True) and pages == 5  # 50 a page, last one 30
    soonest, pages = walk(client, f"host={host}&order=next&limit=100")
    assert soonest == sorted(due, key=lambda i: (due[i], i)) and pages == 3
    # The cursor of the second page by next attempt is the order's key: due time and Id.
    first = client.request("GET", f"/console/queue?host={host}&order=next")
    link = html.unescape(re.search(r'href="([^"]+)" id="next-page"',
                                   first.text).group(1))  # type: ignore[attr-defined,union-attr]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    fiftieth = soonest[49]
    assert query["after"] == [str(fiftieth)]
    assert query["due"] == [due[fiftieth].isoformat()]  # type: ignore[attr-defined]


def test_row_actions_report_each_outcome(console_stack: ConsoleStack) -> None:
    host = unique("outcomes")
    store = queue(console_stack)
    [records] = store.enqueue_many([Envelope(RAW, "a@b.example",
                                             [f"r{n}@{host}" for n in range(3)])])
    assert not isinstance(records, Exception)
    first, second, third = (record.id for record in records)
    client = signed_in(console_stack, "127.0.0.34")
    client.request("GET", f"/console/queue?host={host}")
    held = client.request("POST", "/console/queue/act", f"csrf_token={client.token}"
                          f"&action=hold&id={first}&next=/console/queue?host={host}")
    assert "1 held</div>" in follow(client, held).text  # type: ignore[attr-defined]
    again = client.request("POST", "/console/queue/act", f"csrf_token={client.token}"
                           f"&action=hold&id={first}&id={second}&id={10**12}")
    assert "1 held, 1 skipped (status held), 1 not found (gone meanwhile)</div>" in follow(
        client, again).text  # type: ignore[attr-defined]
    # Discard asks first, listing how many; nothing is gone until it is confirmed.
    ask = client.request("POST", "/console/queue/act", f"csrf_token={client.token}"
                         f"&action=discard&id={second}&id={third}")
    assert ask.status == 200 and "Discard 2 selected messages?" in ask.text  # type: ignore[attr-defined]
    assert sorted(ids_of(store, host)) == [first, second, third]
    done = client.request("POST", "/console/queue/act", f"csrf_token={client.token}"
                          f"&action=discard&id={second}&id={third}&confirm=yes")
    assert "2 discarded</div>" in follow(client, done).text  # type: ignore[attr-defined]
    assert ids_of(store, host) == [first]
    bad = client.request("POST", "/console/queue/act",
                         f"csrf_token={client.token}&action=explode&id=x")
    assert bad.status == 422


def test_a_bulk_action_without_a_filter_needs_all_records_ticked(
        console_stack: ConsoleStack) -> None:
    client = signed_in(console_stack, "127.0.0.35")
    client.request("GET", "/console/queue")
    refused = client.request("POST", "/console/queue/bulk",
                             f"csrf_token={client.token}&action=hold&host=")
    assert refused.status == 422
    assert re.search(r'id="bulk-all-error">No filter: tick', refused.text)  # type: ignore[attr-defined]
    chosen = client.request("POST", "/console/queue/bulk",
                            f"csrf_token={client.token}&action=&host=x.example")
    assert chosen.status == 422  # no action chosen: nothing is asked, nothing done
    assert re.search(r'id="bulk-action-error">Missing data', chosen.text)  # type: ignore[attr-defined]
    count = sum(1 for _ in queue(console_stack).iter_raw_records())
    asked = client.request("POST", "/console/queue/bulk",
                           f"csrf_token={client.token}&action=hold&all=true")
    assert asked.status == 200
    assert f"Hold the {count} records that match the filter now?" in asked.text  # type: ignore[attr-defined]
    assert 'name="all" value="true"' in asked.text  # type: ignore[attr-defined]


def test_an_unknown_message_is_a_404_page_and_the_raw_message_a_download(
        console_stack: ConsoleStack) -> None:
    client = signed_in(console_stack, "127.0.0.36")
    for path in ("/console/queue/999999999", "/console/queue/999999999/raw",
                 f"/console/queue/{2**70}"):
        response = client.request("GET", path)
        assert response.status == 404 and "no such message ID" in response.text  # type: ignore[attr-defined]
        assert response.headers["Content-Type"].startswith("text/html")
    host = unique("raw")
    [[record]] = queue(console_stack).enqueue_many([Envelope(RAW, "a@b.example",
                                                             [f"r@{host}"])])  # type: ignore[misc]
    raw = client.request("GET", f"/console/queue/{record.id}/raw")
    assert raw.status == 200 and raw.headers["Content-Type"] == "message/rfc822"
    assert raw.headers["Content-Disposition"] == f'attachment; filename="{record.id}.eml"'
    assert raw.text.encode() == queue(console_stack).read_raw(record.id)  # type: ignore[attr-defined]


def test_addresses_are_escaped_in_the_queue_and_on_the_message_page(
        console_stack: ConsoleStack) -> None:
    host = unique("escape")
    evil = '"<script>alert(1)</script>"@client.example'
    [records] = queue(console_stack).enqueue_many([Envelope(
        b"Subject: <script>alert(2)</script>\r\n\r\nx\r\n", evil, [f"r@{host}"])])
    assert not isinstance(records, Exception)
    client = signed_in(console_stack, "127.0.0.37")
    for path in (f"/console/queue?host={host}", f"/console/queue/{records[0].id}"):
        text = client.request("GET", path).text  # type: ignore[attr-defined]
        assert re.search(r"&#34;&lt;script&gt;alert\(1\)&lt;/script&gt;&#34;@(<wbr>)?client", text)
        assert "<script>alert" not in text and "<script>" not in text
    assert "Subject: &lt;script&gt;alert(2)&lt;/script&gt;" in text



def test_a_record_in_delivery_shows_as_such_and_an_action_on_it_is_a_mark(
        console_stack: ConsoleStack) -> None:
    host = unique("claimed")
    store = queue(console_stack)
    [[record]] = store.enqueue_many([Envelope(RAW, "a@b.example", [f"r@{host}"])])  # type: ignore[misc]
    client = signed_in(console_stack, "127.0.0.39")
    with store.claimed(record.id) as claim:  # a runner's delivery attempt, as far as anyone sees
        assert claim is not None
        page = client.request("GET", f"/console/queue?host={host}").text  # type: ignore[attr-defined]
        assert '<td class="queue-status text-nowrap">in delivery</td>' in page
        assert "in delivery</span>" in client.request(
            "GET", f"/console/queue/{record.id}").text  # type: ignore[attr-defined]
        marked = client.request("POST", "/console/queue/act", f"csrf_token={client.token}"
                                f"&action=discard&id={record.id}&confirm=yes")
        assert "1 marked (discarded when the delivery attempt in progress ends)</div>" in follow(
            client, marked).text  # type: ignore[attr-defined]
        assert store.get(record.id).status == Status.DISCARD  # type: ignore[union-attr]
    page = client.request("GET", f"/console/queue?host={host}&status=1").text  # type: ignore[attr-defined]
    assert '<td class="queue-status text-nowrap">discarding</td>' in page
