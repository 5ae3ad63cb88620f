"""The overview's chart and heat map as data (app/console/charts.py) and as markup (the
template's macros, rendered by Jinja2 with the autoescaping Flask gives .html templates)."""

from __future__ import annotations

import re
from collections import Counter
from xml.etree import ElementTree

import pytest
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.console import charts
from app.console.charts import WINDOWS, SeriesStyle, heat_level, heat_map, line_chart, y_scale
from tests.conftest import REPO
from tmail.queue.summary import BUCKET_NAMES, Summary

STYLES = (SeriesStyle("sent", "sent", "sent"),
          SeriesStyle("deferred", "deferred", "deferred", "6 3"),
          SeriesStyle("bounced", "bounced", "bounced", "2 2"))
NOW = 20_000 * 1440 + 7 * 60 + 23  # a unix minute: some day at 07:23 UTC
SVG = "{http://www.w3.org/2000/svg}"


def render(macro: str, value: object) -> str:
    env = Environment(loader=FileSystemLoader(REPO / "app" / "console" / "templates"),
                      autoescape=select_autoescape())
    return getattr(env.get_template("console/overview_charts.html").module, macro)(value)


def chart_svg(markup: str) -> ElementTree.Element:
    """The chart's SVG element, parsed as XML (so: well formed)."""
    found = re.search(r'<svg class="chart-svg".*?</svg>', markup, re.S)
    assert found, markup
    return ElementTree.fromstring(found.group(0))


@pytest.mark.parametrize(("highest", "top", "ticks"), [
    (0, 1, [0, 1]),
    (1, 1, [0, 1]),
    (3, 3, [0, 1, 2, 3]),
    (17, 20, [0, 5, 10, 15, 20]),
    (1000, 1000, [0, 500, 1000]),
    (1001, 1500, [0, 500, 1000, 1500]),
])
def test_the_y_axis_has_round_steps_and_never_a_zero_height(
        highest: int, top: int, ticks: list[int]) -> None:
    assert y_scale(highest) == (top, ticks)


def test_minutes_are_summed_into_buckets_and_the_window_ends_with_the_current_one() -> None:
    window = WINDOWS[6]
    first = (NOW // 5 - (window.buckets - 1)) * 5  # the first 5-minute bucket shown
    data = {"sent": {first - 1: 100, first: 1, first + 4: 2, first + 5: 3, NOW: 4, NOW + 1: 50},
            "bounced": {NOW - 1: 1}}
    chart = line_chart("Deliveries", data, STYLES, window, NOW)
    sent, deferred, bounced = chart.lines
    assert window.buckets == 72 and len(sent.points.split()) == 72
    # before the window and after now (a clock ahead) are not counted, as in the totals
    assert chart.totals == (10, 0, 1)
    assert [m.title for m in sent.markers] == [
        f"sent {charts.hhmm(first)}–{charts.hhmm(first + 5)}: 3",
        f"sent {charts.hhmm(first + 5)}–{charts.hhmm(first + 10)}: 3",
        "sent 07:20–07:25: 4"]
    assert chart.summary == ("Deliveries per 5 minutes, the last 6 hours up to 07:23 UTC: "
                             "10 sent, 0 deferred, 1 bounced.")
    assert deferred.markers == () and deferred.total == 0
    assert [m.title for m in bounced.markers] == ["bounced 07:20–07:25: 1"]


def test_the_table_rows_add_up_to_the_totals_one_row_per_time_label() -> None:
    data = {"sent": {NOW - m: m % 7 for m in range(0, 24 * 60, 13)},
            "deferred": {NOW - m: 1 for m in range(0, 24 * 60, 61)}}
    for hours, window in WINDOWS.items():
        chart = line_chart("Deliveries", data, STYLES, window, NOW)
        assert tuple(map(sum, zip(*(row.counts for row in chart.rows), strict=True))) \
            == chart.totals
        assert hours * 60 // window.tick <= len(chart.rows) <= hours * 60 // window.tick + 1
        assert chart.rows[-1].label.endswith(charts.hhmm(NOW + 1))
        assert all(tick.label.endswith(":00") or hours == 1 for tick in chart.x_ticks)
    assert [t.label for t in line_chart("D", data, STYLES, WINDOWS[6], NOW).x_ticks] == [
        "02:00", "03:00", "04:00", "05:00", "06:00", "07:00"]


def test_an_empty_chart_is_flat_on_the_axis_with_a_scale_of_one() -> None:
    chart = line_chart("Deliveries", {}, STYLES, WINDOWS[1], NOW)
    assert chart.empty and chart.totals == (0, 0, 0)
    baseline = f"{chart.plot[3]:.1f}"
    for line in chart.lines:
        assert {point.split(",")[1] for point in line.points.split()} == {baseline}
        assert line.markers == ()
    assert [t.label for t in chart.y_ticks] == ["0", "1"]
    assert "0 sent, 0 deferred, 0 bounced" in chart.summary
    svg = render("line_chart", chart)
    assert "No deliveries" in svg


def test_one_point_reaches_the_top_of_the_scale_at_its_time() -> None:
    chart = line_chart("Deliveries", {"bounced": {NOW - 30: 2}}, STYLES, WINDOWS[1], NOW)
    [marker] = chart.lines[2].markers
    assert marker.y == chart.plot[1]  # the highest value is the top of the axis
    assert marker.title == "bounced 06:53–06:54: 2"
    left, _, right, _ = chart.plot
    assert marker.x == pytest.approx(left + 29 / 59 * (right - left), abs=0.1)


def test_the_svg_is_an_image_with_a_title_a_summary_and_three_series() -> None:
    chart = line_chart("Deliveries", {"sent": {NOW: 5}, "deferred": {NOW - 3: 1}}, STYLES,
                       WINDOWS[1], NOW)
    markup = render("line_chart", chart)
    svg = chart_svg(markup)
    assert svg.get("role") == "img" and svg.get("aria-label") == chart.summary
    assert svg.get("viewBox") == f"0 0 {chart.width} {chart.height}"
    assert svg.find(f"{SVG}title").text == "Deliveries"
    lines = svg.findall(f".//{SVG}polyline")
    assert [line.get("class") for line in lines] == ["series sent", "series deferred",
                                                       "series bounced"]
    assert [line.get("stroke-dasharray") for line in lines] == [None, "6 3", "2 2"]
    texts = Counter(t.text for t in svg.iter(f"{SVG}text"))
    assert texts["07:20"] == 1 and texts["UTC"] == 1
    # the legend says in words what each line is, with its total
    assert re.search(r"sent\s*<span[^>]*>5</span>", markup)
    assert 'class="table' in markup  # the same numbers as a table


def test_labels_and_hosts_are_escaped_in_the_markup() -> None:
    styles = (SeriesStyle("x", "<script>alert(1)</script>", "sent"),)
    chart = line_chart("<b>Deliveries</b>", {"x": {NOW: 1}}, styles, WINDOWS[1], NOW)
    markup = render("line_chart", chart)
    assert "<script>" not in markup and "<b>" not in markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    chart_svg(markup)  # well formed

    summary = Summary(by_domain={'"><script>x</script>.test': [1] + [0] * 9})
    markup = render("heat_table", heat_map(summary, 20))
    assert "<script>" not in markup and "&lt;script&gt;x&lt;/script&gt;.test" in markup


def test_heat_levels_grow_on_a_log_scale_up_to_the_biggest_cell() -> None:
    assert heat_level(0, 100) == 0
    assert heat_level(1, 1) == charts.HEAT_LEVELS
    assert heat_level(1, 10_000) == 1
    assert heat_level(100, 10_000) == 3
    assert heat_level(10_000, 10_000) == charts.HEAT_LEVELS
    levels = [heat_level(n, 500) for n in range(1, 501)]
    assert levels == sorted(levels) and set(levels) == set(range(1, charts.HEAT_LEVELS + 1))


def test_the_heat_map_shows_the_top_domains_with_the_total_and_what_is_left_out() -> None:
    width = len(BUCKET_NAMES)
    by_domain = {f"d{n:02}.test": [n] + [0] * (width - 2) + [1] for n in range(25)}
    heat = heat_map(Summary(by_domain=by_domain), 20)
    assert [row.host for row in heat.rows][:3] == ["d24.test", "d23.test", "d22.test"]
    assert len(heat.rows) == 20 and heat.more_domains == 5
    assert heat.more_records == sum(n + 1 for n in range(5))
    assert heat.total.total == sum(n + 1 for n in range(25))
    assert heat.rows[0].cells[0] == charts.Cell(24, charts.HEAT_LEVELS)
    assert heat.rows[0].cells[1] == charts.Cell(0, 0)
    assert heat.rows[0].cells[-1] == charts.Cell(1, 1)
    markup = render("heat_table", heat)
    assert markup.count("<tr") == 1 + 1 + 20  # the header, TOTAL, the domains
    assert 'class="heat heat-5"' in markup and ">24<" in markup
    assert "5 more domains" in markup


def test_an_empty_queue_has_an_empty_heat_map() -> None:
    heat = heat_map(Summary(), 20)
    assert heat.empty and heat.rows == () and heat.more_domains == 0
    assert "The queue is empty" in render("heat_table", heat)
