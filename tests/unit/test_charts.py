"""The traffic charts: plain SVG without script, numbers also in words, labels on the clock."""

import xml.etree.ElementTree as ET

from relay.admin.charts import DOT_RADIUS, HOURS, MINUTES, panels, seconds
from relay.outbox.traffic import Bucket, window

NOW = 1_700_000_000.0  # Tue 14 Nov 2023 22:13:20 UTC
SVG = "{http://www.w3.org/2000/svg}"


def week(**fields) -> list[Bucket]:
    step, count = HOURS
    return [Bucket(window(NOW, step, count) + n * step, **fields) for n in range(count)]


def hour(**fields) -> list[Bucket]:
    step, count = MINUTES
    return [Bucket(window(NOW, step, count) + n * step, **fields) for n in range(count)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def texts(svg: ET.Element) -> list[str]:
    return [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text") if t.text]


def test_each_chart_is_an_svg_image_with_its_title_and_no_script():
    for panel in panels(hour(received=2, delivered=2, latency_mean=0.5, latency_max=1.0), week()):
        for chart in panel.charts:
            for drawing in (chart.wide, chart.narrow):
                svg = parse(drawing)
                assert svg.get("role") == "img"
                assert svg.find("{http://www.w3.org/2000/svg}title").text == chart.title
                assert not [e for e in svg.iter() if str(e.tag).endswith("script")]
                assert "<script" not in drawing
            assert parse(chart.wide).get("viewBox") == "0 0 600 220"
            assert parse(chart.narrow).get("viewBox") == "0 0 360 200"


def test_the_legend_gives_totals_and_the_mean_latency_over_all_deliveries():
    minutes = hour()
    minutes[10] = Bucket(minutes[10].start, received=3, delivered=1, latency_mean=2.0, latency_max=2.0)
    minutes[20] = Bucket(minutes[20].start, delivered=3, failed=1, retrying=4, latency_mean=6.0, latency_max=30.0)
    counts, latency = panels(minutes, week())[0].charts
    assert [(series.name, value) for series, value in counts.legend] == [
        ("received", "3"), ("delivered", "4"), ("failed", "1"), ("retrying", "4")]
    assert [(series.name, value) for series, value in latency.legend] == [("mean", "5 s"), ("slowest", "30 s")]


def drawn(svg: ET.Element) -> tuple[list[ET.Element], list[ET.Element]]:
    """The lines and dots a chart's series draw (the axes and guides left out)."""
    series = [g for g in svg.iter(f"{SVG}g") if "series" in (g.get("class") or "").split()]
    lines = [p for g in series for p in g.iter(f"{SVG}path") if "line" in p.get("class", "").split()]
    dots = [c for g in series for c in g.iter(f"{SVG}circle")]
    return lines, dots


def test_a_lone_minute_of_traffic_is_drawn_as_a_dot():
    """One delivery in an hour, with empty minutes either side: no line to draw, so a dot
    for each latency series; the first minute, with nothing before it, too."""
    for lone in (30, 0):
        minutes = hour()
        minutes[lone] = Bucket(minutes[lone].start, received=1, delivered=1, latency_mean=0.7, latency_max=2.1)
        _, latency = panels(minutes, week())[0].charts
        for drawing in (latency.wide, latency.narrow):
            lines, dots = drawn(parse(drawing))
            assert lines == []
            assert len(dots) == 2 and dots[0].get("cx") == dots[1].get("cx")
            assert {float(dot.get("r")) for dot in dots} == {DOT_RADIUS}
            slowest, mean = dots  # the mean's drawn last, over the slowest's
            assert float(slowest.get("cy")) < float(mean.get("cy"))


def test_neighbouring_minutes_are_joined_by_a_line_without_dots():
    minutes = hour()
    for n in (30, 31):
        minutes[n] = Bucket(minutes[n].start, received=1, delivered=1, latency_mean=0.7, latency_max=2.1)
    _, latency = panels(minutes, week())[0].charts
    lines, dots = drawn(parse(latency.wide))
    assert len(lines) == 2 and dots == []


def test_with_nothing_delivered_latency_says_so():
    _, latency = panels(hour(received=1), week())[0].charts
    assert [value for _, value in latency.legend] == ["—", "—"]
    assert "nothing delivered" in texts(parse(latency.wide))


def test_counts_are_whole_numbers_on_the_axis_however_few():
    counts, _ = panels(hour(), week())[0].charts
    assert all(label.isdigit() for label in texts(parse(counts.wide)) if ":" not in label)
    counts, _ = panels(hour(retrying=1), week())[0].charts
    assert {"0", "1"} <= set(texts(parse(counts.narrow)))


def test_labels_fall_on_the_utc_clock():
    minutes, hours = panels(hour(), week())
    shown = texts(parse(minutes.charts[0].wide))
    assert [t for t in shown if ":" in t] == ["21:20", "21:30", "21:40", "21:50", "22:00", "22:10"]
    shown = texts(parse(minutes.charts[0].narrow))
    assert [t for t in shown if ":" in t] == ["21:15", "21:30", "21:45", "22:00"]
    days = [t for t in texts(parse(hours.charts[0].wide)) if t[:3].isalpha()]
    assert days == ["Wed 08", "Thu 09", "Fri 10", "Sat 11", "Sun 12", "Mon 13", "Tue 14"]
    # A phone has room for every other day (those on an even count of days since the epoch).
    assert [t for t in texts(parse(hours.charts[0].narrow)) if t[:3].isalpha()] == ["Thu 09", "Sat 11", "Mon 13"]


def test_a_latency_the_chart_has_none_of_reads_as_a_dash():
    assert (seconds(None), seconds(0.04)) == ("—", "40 ms")
