"""The status page's pictures of traffic, drawn on the server as SVG by pygal.

The page serves no script (its Content-Security-Policy forbids them), so each chart is
plain SVG that reads the same with scripts off: pygal's own script, for its tooltips,
is left out, and the legend beside each chart gives its numbers in words. Each chart is
drawn twice, for a laptop's column and for a phone, so its text is read at about the
size it was drawn at: one drawing scaled to both would be tiny on a phone or huge on a
laptop. The page's style shows the one that fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pygal
from pygal.style import Style

from relay.core.timefmt import duration
from relay.outbox.traffic import Bucket

#: (seconds per bucket, buckets) of the two views: the last hour by minute, the last week by hour.
MINUTES = (60.0, 60)
HOURS = (3600.0, 168)

#: A lone value's dot: a little wider than the lines, so it reads as a point and not a speck.
DOT_RADIUS = 3

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'


@dataclass(frozen=True)
class Size:
    width: int
    height: int
    #: Seconds between the times shown under the axis, by minute and by hour.
    minute_labels: float
    hour_labels: float


WIDE = Size(600, 220, 600, 86400)
NARROW = Size(360, 200, 900, 2 * 86400)


@dataclass(frozen=True)
class Series:
    name: str
    color: str  # the page's own (base.html): delivered green, failed red, retrying amber
    value: Callable[[Bucket], float | None]
    dashes: str = "none"


# The first of a chart's series is drawn on top. Received is dashed: while all goes well
# it runs along delivered, which shows through.
COUNTS = (
    Series("received", "#4a5562", lambda b: b.received, "5,4"),
    Series("delivered", "#1e7d3a", lambda b: b.delivered),
    Series("failed", "#b4232a", lambda b: b.failed),
    Series("retrying", "#d18f00", lambda b: b.retrying),
)
LATENCY = (
    Series("mean", "#1f5fbf", lambda b: b.latency_mean),
    Series("slowest", "#9dbbe6", lambda b: b.latency_max),
)


@dataclass(frozen=True)
class Chart:
    title: str
    wide: str  # SVG
    narrow: str
    legend: tuple[tuple[Series, str], ...]  # each series with its total (or overall value) in words


@dataclass(frozen=True)
class Panel:
    title: str
    charts: tuple[Chart, ...]


def seconds(value: float | None) -> str:
    return "—" if value is None else duration(value)


def _style(colors: Sequence[str]) -> Style:
    return Style(background="transparent", plot_background="transparent", foreground="#1d232b",
                 foreground_strong="#1d232b", foreground_subtle="#5f6b7a",
                 guide_stroke_color="#e3e7ec", major_guide_stroke_color="#e3e7ec",
                 guide_stroke_dasharray="none", major_guide_stroke_dasharray="none",
                 colors=tuple(colors), font_family=FONT, label_font_size=12,
                 major_label_font_size=12, no_data_font_size=14, opacity="1", opacity_hover="1",
                 stroke_opacity="1", stroke_opacity_hover="1", stroke_width="2", stroke_width_hover="2",
                 transition="0s")


def _without_scripts(svg: Any) -> Any:  # pygal's root element, lxml's or xml.etree's
    for parent in svg.iter():
        for script in [child for child in parent if _named(child, "script")]:
            parent.remove(script)
    return svg


def _named(element: Any, name: str) -> bool:
    return str(element.tag).rpartition("}")[2] == name  # with or without the SVG namespace


def _isolated(values: Sequence[float | None]) -> list[float | None]:
    """Each value with no neighbour to draw a line to; None in place of every other."""
    around = [None, *values, None]
    return [value if around[n] is None and around[n + 2] is None else None for n, value in enumerate(values)]


def _draw(buckets: Sequence[Bucket], step: float, series: Sequence[Series], title: str, size: Size,
          value_formatter: Callable[[float], str], order_min: int | None, no_data: str) -> str:
    every = size.minute_labels if step < 3600 else size.hour_labels
    # Each bucket has its own label (pygal tells them apart by it); those on a whole
    # `every` are shown under the axis.
    labels = [time.strftime("%H:%M" if step < 3600 else "%a %d" if b.start % 86400 == 0 else "%a %d %H:00",
                            time.gmtime(b.start)) for b in buckets]
    lines = [(s, [s.value(b) for b in buckets]) for s in reversed(series)]
    # With dots off and interruptions on, a value between two empty buckets draws nothing,
    # and sparse traffic (most relays') leaves most of them so: those get a dot of their own.
    lone = [(s, _isolated(values)) for s, values in lines]
    dots = [(s, values) for s, values in lone if any(v is not None for v in values)]
    chart = pygal.Line(
        style=_style([s.color for s, _ in (*lines, *dots)]), width=size.width, height=size.height, js=[],
        disable_xml_declaration=True, show_legend=False, show_dots=False, include_x_axis=True,
        allow_interruptions=True, x_labels=labels,
        x_labels_major=[label for label, b in zip(labels, buckets, strict=True) if b.start % every == 0],
        show_minor_x_labels=False, show_x_guides=False, truncate_label=-1, margin=4, spacing=6,
        margin_right=18,  # room for half a label under the last bucket
        max_scale=5, order_min=order_min, value_formatter=value_formatter, no_data_text=no_data,
        classes=["traffic-chart"])
    chart.add_xml_filter(_without_scripts)

    def describe(svg: Any) -> Any:
        svg.set("role", "img")
        for element in svg:
            if _named(element, "title"):  # pygal's, "Pygal" unless the chart draws a title
                element.text = title
        return svg
    chart.add_xml_filter(describe)
    for s, values in lines:
        chart.add(s.name, values, stroke_style={"dasharray": s.dashes})
    for s, values in dots:
        chart.add(s.name, values, stroke=False, show_dots=True, dots_size=DOT_RADIUS)
    return chart.render(is_unicode=True)


def _counts(buckets: Sequence[Bucket], step: float, title: str) -> Chart:
    # order_min=0: whole numbers on the axis, however few webhooks came
    wide, narrow = [_draw(buckets, step, COUNTS, title, size, lambda v: f"{v:.0f}", 0, "") for size in (WIDE, NARROW)]
    legend = tuple((s, str(sum(s.value(b) or 0 for b in buckets))) for s in COUNTS)
    return Chart(title, wide, narrow, legend)


def _latency(buckets: Sequence[Bucket], step: float, title: str) -> Chart:
    wide, narrow = [_draw(buckets, step, LATENCY, title, size, seconds, None, "nothing delivered")
                    for size in (WIDE, NARROW)]
    timed = [(b.delivered, b.latency_mean, b.latency_max) for b in buckets
             if b.latency_mean is not None and b.latency_max is not None]
    count = sum(n for n, _, _ in timed)
    mean = sum(n * latency for n, latency, _ in timed) / count if count else None
    slowest = max((latency for _, _, latency in timed), default=None)
    return Chart(title, wide, narrow, ((LATENCY[0], seconds(mean)), (LATENCY[1], seconds(slowest))))


def panels(minutes: Sequence[Bucket], hours: Sequence[Bucket]) -> list[Panel]:
    """The last hour by minute and the last week by hour: webhooks, then delivery latency."""
    return [
        Panel("Last hour, per minute", (
            _counts(minutes, MINUTES[0], "Webhooks per minute, last hour"),
            _latency(minutes, MINUTES[0], "Delivery latency per minute, last hour"))),
        Panel("Last 7 days, per hour", (
            _counts(hours, HOURS[0], "Webhooks per hour, last 7 days"),
            _latency(hours, HOURS[0], "Delivery latency per hour, last 7 days"))),
    ]
