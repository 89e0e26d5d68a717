"""The data of `ft adapters compare`: the write-ups' table (training cost and the latest evaluation of
each adapter, and of the untuned base) for a set of adapters on one dataset split, and the
`ft submit eval` command that would fill its gaps; `plot_comparison` draws its metrics as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from catalog.adapters import get_adapter
from catalog.datasets import get_dataset_split
from catalog.errors import InvalidInput, NotFound
from catalog.store import ArtifactStore
from worker.evaluation.metrics import get_metric
from worker.evaluation.metrics.infer import infer_metric


def eval_command(
    adapters: Sequence[str],
    bases: Sequence[str],
    dataset_ref: str,
    split: str,
    metric: str,
    *,
    template: str | None = None,
) -> str:
    """The `ft submit eval ...` command line that evaluates `adapters` and the untuned `bases`."""
    parts = ["ft", "submit", "eval", *adapters]
    for base in bases:
        parts += ["--base", base]
    parts += ["--dataset", f"{dataset_ref}:{split}", "--metric", metric]
    if template is not None:
        parts += ["--template", template]
    return " ".join(parts)


def comparison(
    session: Session,
    store: ArtifactStore,
    adapters: Sequence[str],
    *,
    dataset: str,
    metric: str | None = None,
    base: bool = False,
) -> dict[str, Any]:
    """The data of `ft adapters compare`: one column per adapter (after one per untuned base model
    with `base`), each with its training cost and its latest evaluation on the dataset version,
    split and metric; which have none, and the `ft submit eval` command that would evaluate them.

    Without `metric`: the metric of the newest of these evaluations on that split, else the one
    `ft submit eval` would default to."""
    from catalog.evaluations import comparison_columns, list_evaluations, metric_names

    if not adapters:
        raise InvalidInput("name at least one ADAPTER to compare")
    ds, split = get_dataset_split(session, dataset)
    rows = [get_adapter(session, name) for name in dict.fromkeys(adapters)]
    models = list({a.base_model_id: a.base_model for a in rows}.values()) if base else []
    if metric is None:
        wanted = {a.id for a in rows}
        found = [
            ev for ev in list_evaluations(session, dataset_id=ds.id)
            if ev.split == split and (ev.adapter_id in wanted or (base and ev.adapter_id is None))
        ]  # fmt: skip
        metric = found[-1].metric if found else infer_metric(store, ds, split)
    headline = get_metric(metric).headline
    columns = comparison_columns(session, rows, models, dataset_id=ds.id, split=split, metric=metric)
    keys: list[str] = []
    for column in columns:
        keys += [k for k in metric_names(column["metrics"] or {}, headline) if k not in keys]
    if headline in keys:
        keys.remove(headline)
    missing_adapters = [c["name"] for c in columns if c["evaluation_id"] is None and c["kind"] == "adapter"]
    missing_bases = [c["name"] for c in columns if c["evaluation_id"] is None and c["kind"] == "base"]
    shared = {a.template.ref for a in rows}
    template = shared.pop() if len(shared) == 1 and missing_bases else None
    command = None
    if missing_adapters or missing_bases:
        command = eval_command(missing_adapters, missing_bases, ds.ref, split, metric, template=template)
    return {
        "dataset": ds.ref,
        "split": split,
        "metric": metric,
        "headline": headline,
        "metric_keys": [headline, *keys],
        "columns": columns,
        "missing": [c["name"] for c in columns if c["evaluation_id"] is None],
        "missing_adapters": missing_adapters,
        "missing_bases": missing_bases,
        "template": template,
        "evaluate_command": command,
    }


def plot_comparison(data: dict[str, Any], out: Path) -> Path:
    """A PNG at `out` of `comparison(...)`'s metrics side by side: one panel per metric (the headline
    first; metrics differ in scale, so each gets its own axis), one bar per column (model), its value
    written on it; a model without an evaluation is marked "no eval". Drawn with matplotlib's Agg
    backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, keys = data["columns"], data["metric_keys"]
    if all(c["metrics"] is None for c in columns):
        raise NotFound(
            f"nothing to plot: no {data['metric']} evaluation on {data['dataset']}:{data['split']} "
            f"for {', '.join(c['name'] for c in columns)}; run: {data['evaluate_command']}"
        )
    names = [c["name"] for c in columns]
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(columns))]
    per_row = min(len(keys), 4)
    rows = -(-len(keys) // per_row)
    fig, axes = plt.subplots(
        rows, per_row, figsize=(max(3.2 * per_row, 1.2 * len(columns) + 2), 3.4 * rows + 0.6), squeeze=False
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [(c["metrics"] or {}).get(key) for c in columns]
        heights = [v if isinstance(v, int | float) else 0.0 for v in values]
        bars = ax.bar(range(len(columns)), heights, color=colours, width=0.6)
        pad = max(0.0, (3 - len(columns)) / 2)  # one or two bars stay bar-shaped
        ax.set_xlim(-0.5 - pad, len(columns) - 0.5 + pad)
        for bar, value in zip(bars, values, strict=True):
            label = "no eval" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")  # fmt: skip
        ax.set_title(key + (" (headline)" if key == data["headline"] else ""), fontsize=10)
        tilt = len(columns) > 3
        ax.set_xticks(
            range(len(columns)), names, rotation=30 if tilt else 0, ha="right" if tilt else "center"
        )
        ax.tick_params(axis="x", labelsize=8)
        top = max(heights, default=0.0)
        ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{data['dataset']}:{data['split']}, {data['metric']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
