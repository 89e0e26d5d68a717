"""How numbers look on the dashboard's pages: sizes, counts, durations, times, progress (Jinja filters).

The CLI's own helpers live in `cli/`, which nothing may import; these are the same rules, kept small."""

from __future__ import annotations

import datetime as dt
from typing import Any


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def when(t: dt.datetime | None) -> str:
    return "-" if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def percent_done(progress: dict[str, Any] | None) -> float | None:
    """How far a job is, 0-100, from whatever its handler reported (steps or rows); None if unknown."""
    progress = progress or {}
    for done_key, total_key in (("step", "total"), ("rows_done", "rows_total")):
        done, total = progress.get(done_key), progress.get(total_key)
        if done is not None and total:
            return max(0.0, min(100.0, 100.0 * float(done) / float(total)))
    return None


def progress_text(progress: dict[str, Any] | None) -> str:
    """`stage step/total (pct%) loss=... eta=...`, as `ft jobs list` prints it."""
    if not progress:
        return ""
    rest = dict(progress)
    parts = []
    if stage := rest.pop("stage", None):
        parts.append(str(stage))
    for done_key, total_key, unit in (("step", "total", "steps"), ("rows_done", "rows_total", "rows")):
        done, total = rest.pop(done_key, None), rest.pop(total_key, None)
        if done is not None and total:
            parts.append(f"{done}/{total} {unit} ({100 * float(done) / float(total):.0f}%)")
        elif done is not None:
            parts.append(f"{done} {unit}")
    if (eta := rest.pop("eta_s", None)) is not None:
        rest["eta"] = human_seconds(eta)
    for key, value in rest.items():
        if isinstance(value, dict | list):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


FILTERS = {
    "bytes": human_bytes,
    "count": human_count,
    "seconds": human_seconds,
    "when": when,
    "number": number,
    "progress": progress_text,
    "percent_done": percent_done,
}
FILTERS["format_as"] = lambda value, name: FILTERS[name](value)
"""`{{ value | format_as("bytes") }}`: a filter chosen by name (the compare table's rows)."""
