"""The inline SVG charts: points mapped into the plot, labels escaped, non-finite values left out."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from dashboard.svg import HEIGHT, PAD_BOTTOM, PAD_LEFT, PAD_RIGHT, PAD_TOP, WIDTH, line_chart


def test_a_chart_is_well_formed_svg_with_one_polyline_per_series():
    svg = line_chart({"loss": [(1, 3.0), (2, 2.0), (3, 1.0)], "eval loss": [(3, 2.5)], "none": []},
                     title="loss", y_label="loss")  # fmt: skip
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert [(e.get("data-series"), e.get("data-points")) for e in lines] == [
        ("loss", "3"),
        ("eval loss", "1"),
    ]
    points = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    assert points[0] == (PAD_LEFT, PAD_TOP)  # the first step, the highest loss: top left
    assert points[-1] == (
        WIDTH - PAD_RIGHT,
        HEIGHT - PAD_BOTTOM,
    )  # the last step, the lowest loss: bottom right


def test_labels_are_escaped_and_nan_is_left_out():
    svg = line_chart({"<script>x</script>": [(1, float("nan")), (2, 1.0), (3, float("inf"))]},
                     title='a"b', y_label="<b>")  # fmt: skip
    assert "<script>" not in svg and "&lt;script&gt;x&lt;/script&gt;" in svg and "&lt;b&gt;" in svg
    assert 'aria-label="a&quot;b"' in svg
    assert re.search(r'data-points="1"', svg) and "nan" not in svg and "inf" not in svg
    ET.fromstring(svg)


def test_nothing_to_draw_is_an_empty_string():
    assert line_chart({"loss": [], "lr": [(1, float("nan"))]}, title="t", y_label="y") == ""
