"""The overview's pictures as data: a line chart of per-minute counters and the qshape heat map.

Pure functions from numbers to geometry (coordinates, tick labels, shading levels); the
markup is drawn by the template ``console/overview_charts.html``, so that Jinja2's
autoescaping covers every label and no SVG is built by string concatenation. Everything a
chart shows in colour is also in text: the legend and a table of the same numbers.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tmail.queue.summary import BUCKET_NAMES, Summary

# The SVG's user space (a viewBox: the picture scales to the width of its box).
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 36  # margins for the axes' labels
HEAT_LEVELS = 5  # shades of a non-zero cell: heat-1 .. heat-5 (heat-0: none)


@dataclass(frozen=True)
class Window:
    """A chart's period: ``hours`` ending now, a point per ``bucket`` minutes, a time label
    (and a row of the table) per ``tick`` minutes. About 60 to 100 points per series."""

    hours: int
    bucket: int
    tick: int

    @property
    def buckets(self) -> int:
        return self.hours * 60 // self.bucket


WINDOWS = {1: Window(1, 1, 10), 6: Window(6, 5, 60), 24: Window(24, 15, 240)}


@dataclass(frozen=True)
class SeriesStyle:
    """One series: its key in the data, its name in the legend, its CSS class (the colour)
    and its dash pattern (so that the lines differ without colour too)."""

    key: str
    name: str
    css: str
    dash: str = ""


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Line:
    key: str
    name: str
    css: str
    dash: str
    total: int
    points: str  # the polyline's "x,y x,y ..."
    markers: tuple[Marker, ...]  # the non-zero points, each with its value as a tooltip


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Row:
    label: str
    counts: tuple[int, ...]


@dataclass(frozen=True)
class LineChart:
    title: str
    summary: str  # the SVG's aria-label: what the chart says, in words
    step: str  # what a point sums: "minute", "5 minutes"
    width: int
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom
    lines: tuple[Line, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    rows: tuple[Row, ...]  # the same numbers per tick interval, for the table
    totals: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return not any(self.totals)


def hhmm(minute: int) -> str:
    """A unix minute as ``HH:MM`` UTC."""
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%H:%M")


def nice_step(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def y_scale(highest: float) -> tuple[int, list[int]]:
    """The axis' top and its labelled values: a round step, about four of them, 0 included.
    An empty chart gets the scale 0..1 (never a division by zero)."""
    step = nice_step(highest / 4)
    top = step * max(1, math.ceil(highest / step))
    return top, list(range(0, top + 1, step))


def bucketed(minutes: Mapping[int, float], start: int, size: int, count: int,
             end: int) -> list[int]:
    """Sums of ``minutes`` ({unix minute: value}) over ``count`` buckets of ``size`` minutes
    from ``start``; minutes outside [start, end] (another process's clock ahead) are left
    out, as in the totals."""
    sums = [0.0] * count
    for minute, value in minutes.items():
        if start <= minute <= end:
            sums[(minute - start) // size] += value
    return [round(value) for value in sums]


def _rows(data: Sequence[Mapping[int, float]], start: int, end: int,
          tick: int) -> tuple[Row, ...]:
    """Totals per tick interval (aligned on the clock, the first one clipped to ``start``)."""
    bounds = [start, *range((start // tick + 1) * tick, end + 1, tick), end + 1]
    sums = [[0.0] * (len(bounds) - 1) for _ in data]
    for row_sums, minutes in zip(sums, data, strict=True):
        for minute, value in minutes.items():
            if start <= minute <= end:
                row_sums[bisect.bisect_right(bounds, minute) - 1] += value
    return tuple(Row(f"{hhmm(low)}–{hhmm(high)}", tuple(round(s[i]) for s in sums))
                 for i, (low, high) in enumerate(itertools.pairwise(bounds)))


def line_chart(title: str, data: Mapping[str, Mapping[int, float]],
               styles: Sequence[SeriesStyle], window: Window, now_minute: int) -> LineChart:
    """The series of ``data`` ({series key: {unix minute: value}}) over ``window``, ending
    with the bucket of ``now_minute``; series are drawn in the order of ``styles``."""
    count, size = window.buckets, window.bucket
    start = (now_minute // size - (count - 1)) * size
    series = [data.get(style.key, {}) for style in styles]
    counts = [bucketed(minutes, start, size, count, now_minute) for minutes in series]
    top, y_values = y_scale(max((max(c) for c in counts), default=0))
    left, right, upper, lower = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM

    def x(minute: float) -> float:
        span = (count - 1) * size
        return (left + right) / 2 if span == 0 else left + (minute - start) / span * (right - left)

    def y(value: float) -> float:
        return lower - value / top * (lower - upper)

    lines = []
    for style, bucket_counts in zip(styles, counts, strict=True):
        coords = [(x(start + i * size), y(n)) for i, n in enumerate(bucket_counts)]
        markers = tuple(
            Marker(round(cx, 1), round(cy, 1),
                   f"{style.name} {hhmm(start + i * size)}–{hhmm(start + (i + 1) * size)}: {n}")
            for i, ((cx, cy), n) in enumerate(zip(coords, bucket_counts, strict=True)) if n)
        lines.append(Line(style.key, style.name, style.css, style.dash, sum(bucket_counts),
                          " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords), markers))
    first_tick = -(-start // window.tick) * window.tick
    x_ticks = tuple(Tick(round(x(m), 1), hhmm(m))
                    for m in range(first_tick, start + (count - 1) * size + 1, window.tick))
    totals = tuple(line.total for line in lines)
    per = f"{size} minutes" if size > 1 else "minute"
    summary = (f"{title} per {per}, the last {window.hours} hour{'s' * (window.hours > 1)} "
               f"up to {hhmm(now_minute)} UTC: "
               + ", ".join(f"{line.total} {line.name}" for line in lines) + ".")
    return LineChart(
        title=title, summary=summary, step=per, width=WIDTH, height=HEIGHT,
        plot=(left, upper, right, lower), lines=tuple(lines), x_ticks=x_ticks,
        y_ticks=tuple(Tick(round(y(v), 1), str(v)) for v in y_values),
        rows=_rows(series, start, now_minute, window.tick), totals=totals)


# --- the heat map: where the queue is stuck, by destination and age ------------------------


@dataclass(frozen=True)
class Cell:
    count: int
    level: int  # 0 (empty) .. HEAT_LEVELS


@dataclass(frozen=True)
class HeatRow:
    host: str
    total: int
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class HeatMap:
    buckets: tuple[str, ...]
    total: HeatRow
    rows: tuple[HeatRow, ...]
    more_domains: int  # domains beyond the top ones, not shown
    more_records: int

    @property
    def empty(self) -> bool:
        return self.total.total == 0


def heat_level(count: int, highest: int) -> int:
    """A cell's shade: 0 for none, else 1 .. HEAT_LEVELS on a log scale up to ``highest``
    (queues are skewed: one stuck domain with 10,000 must not make every 12 look empty)."""
    if count <= 0:
        return 0
    if highest <= 1 or count >= highest:
        return HEAT_LEVELS
    return 1 + round((HEAT_LEVELS - 1) * math.log(count) / math.log(highest))


def heat_map(summary: Summary, top: int) -> HeatMap:
    """The ``top`` biggest domains of the summary (as ``GET /queue/summary?top=`` lists
    them) and the total row; shades are relative to the biggest domain cell."""
    shown = summary.domains(top)
    highest = max((n for _, counts in shown for n in counts), default=0)
    rows = tuple(HeatRow(host, sum(counts), tuple(Cell(n, heat_level(n, highest))
                                                  for n in counts))
                 for host, counts in shown)
    total = summary.total
    return HeatMap(
        buckets=BUCKET_NAMES,
        total=HeatRow("TOTAL", sum(total), tuple(Cell(n, 0) for n in total)),
        rows=rows,
        more_domains=len(summary.by_domain) - len(rows),
        more_records=sum(total) - sum(row.total for row in rows),
    )
