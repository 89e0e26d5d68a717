"""Curves as inline SVG, drawn from (step, value) points: no chart library, nothing to fetch.

The output is markup built here from numbers only (labels are escaped), so a page may include it as
it is. One chart holds several series on shared axes (loss and eval loss)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 640, 260
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 16, 16, 36
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi == lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, y_label: str) -> str:
    """An SVG line chart of every non-empty series (name -> (x, y) points); '' when all are empty."""
    finite = {
        name: [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        for name, points in series.items()
    }
    drawn = {name: points for name, points in finite.items() if points}  # a NaN loss is left out, not drawn
    if not drawn:
        return ""
    xs = [x for points in drawn.values() for x, _ in points]
    ys = [y for points in drawn.values() for _, y in points]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def px(x: float) -> float:
        return PAD_LEFT + (0.5 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo)) * plot_w

    def py(y: float) -> float:
        return PAD_TOP + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    for y in _ticks(y_lo, y_hi):
        out.append(f'<line x1="{PAD_LEFT}" x2="{PAD_LEFT + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                   'stroke="#eee"/>')  # fmt: skip
        out.append(
            f'<text x="{PAD_LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{y:.3g}</text>'
        )
    for x in sorted({round(x) for x in _ticks(x_lo, x_hi)}):  # steps are whole numbers: no tick twice
        out.append(f'<text x="{px(x):.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" text-anchor="middle" '
                   f'font-size="11">{x:.0f}</text>')  # fmt: skip
    out.append(
        f'<text x="{PAD_LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle" font-size="12">step</text>'
    )
    out.append(f'<text x="12" y="{PAD_TOP + plot_h / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 12 {PAD_TOP + plot_h / 2})">{escape(y_label)}</text>')  # fmt: skip
    for i, (name, points) in enumerate(drawn.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline class="series" data-series="{escape(name)}" data-points="{len(points)}" '
                   f'fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')  # fmt: skip
        if len(points) == 1:
            x, y = points[0]
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{PAD_LEFT + plot_w - 8}" y="{PAD_TOP + 14 + 14 * i}" text-anchor="end" '
                   f'font-size="12" fill="{colour}">'
                   f"{escape(name)}</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)
