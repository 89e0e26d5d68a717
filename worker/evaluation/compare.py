"""The data of `ft adapters compare`: the write-ups' table (training cost and the latest evaluation of
each adapter, and of the untuned base) for a set of adapters on one dataset split, and the
`ft submit eval` command that would fill its gaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from catalog.adapters import get_adapter
from catalog.datasets import get_dataset_split
from catalog.errors import InvalidInput
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
