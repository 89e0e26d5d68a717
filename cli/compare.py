"""`ft adapters compare` (the write-up's table: adapters as columns) and `ft adapters evals`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.adapters import adapters
from cli.context import AppContext, pass_app
from cli.output import human_bytes, human_count, human_seconds, print_json, print_table, when
from worker.evaluation.metrics import METRICS


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}%"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def table_rows(data: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(row label, one cell per column) in the write-up's order; the metric's headline first."""
    columns = data["columns"]

    def row(label: str, key: str, fmt: Callable[[Any], str]) -> tuple[str, list[str]]:
        return label, [fmt(c[key]) for c in columns]

    metric_rows = [
        (name, [_number((c["metrics"] or {}).get(name)) for c in columns]) for name in data["metric_keys"]
    ]
    return [
        ("method", [c["method"] or "(untuned)" for c in columns]),
        row("peak training memory", "peak_training_memory_bytes", human_bytes),
        row("trainable params", "trainable_params", human_count),
        row("total params", "total_params", human_count),
        row("trainable %", "trainable_percent", _percent),
        row("inference memory", "inference_memory_bytes", human_bytes),
        row("training time", "train_seconds", human_seconds),
        *metric_rows,
        row("test time", "test_seconds", human_seconds),
        row("tokens/s", "tokens_per_s", _rate),
        row("samples", "samples", _number),
    ]


def render_markdown(data: dict[str, Any]) -> str:
    names = [c["name"] for c in data["columns"]]
    lines = [
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for label, cells in table_rows(data):
        lines.append(f"| {label} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def render_text(data: dict[str, Any]) -> str:
    rows = [("", [c["name"] for c in data["columns"]]), *table_rows(data)]
    label_w = max(len(label) for label, _ in rows)
    widths = [max(len(cells[i]) for _, cells in rows) for i in range(len(data["columns"]))]
    return "\n".join(
        (
            label.ljust(label_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        ).rstrip()
        for label, cells in rows
    )


@adapters.command("compare")
@click.argument("adapter_names", metavar="ADAPTER...", nargs=-1, required=True)
@click.option(
    "--dataset",
    "-d",
    required=True,
    metavar="NAME[:VERSION][:SPLIT]",
    help="The evaluations' dataset  [default split: test; version: latest]",
)
@click.option(
    "--metric",
    type=click.Choice(sorted(METRICS)),
    help="[default: that of the newest of these evaluations, else as `ft submit eval`]",
)
@click.option("--base", is_flag=True, help="Add the untuned base model as the first column.")
@click.option(
    "--evaluate",
    is_flag=True,
    help="Submit the missing evaluations and wait for them (needs a running `ft worker`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the data as JSON.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (for a README).")
@click.option("--plot", is_flag=True, help="Also draw the metrics side by side as a PNG and print its path.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Where --plot writes the PNG  [default: compare-....png in FT_HOME's logs]")  # fmt: skip
@pass_app
def compare(
    app: AppContext, adapter_names: tuple[str, ...], dataset: str, metric: str | None, base: bool,
    evaluate: bool, as_json: bool, markdown: bool, plot: bool, out: Path | None,
) -> None:  # fmt: skip
    """Compare adapters on one dataset split: a table with one column per adapter.

    Rows: peak training memory, trainable / total parameters, trainable %, inference memory,
    training time, the metric (headline first), test (generation) time, tokens/s, samples. Each
    column uses the latest evaluation of that adapter on that dataset version, split and metric.
    Adapters without one are listed with the `ft submit eval` command that evaluates them;
    --evaluate submits it and waits (a worker must be running). --plot also draws the metrics as
    a PNG, one panel per metric and one bar per column, and prints its path (in --json: "plot").

    \b
    Example:
        ft adapters compare faults-lora faults-freeze faults-full --dataset faults --base
        ft adapters compare faults-lora faults-qlora -d faults:test --markdown >> README.md
        ft adapters compare faults-lora -d faults --metric triple-f1 --evaluate --json
        ft adapters compare faults-lora faults-freeze -d faults --base --plot -o compare.png
    """
    from catalog.errors import InvalidInput
    from worker.evaluation.compare import comparison

    if as_json and markdown:
        raise InvalidInput("--json and --markdown exclude each other: choose one")
    if out is not None and not plot:
        raise InvalidInput("--out is where --plot writes its PNG: add --plot")
    with app.catalog.session() as s:
        data = comparison(s, app.store, adapter_names, dataset=dataset, metric=metric, base=base)
    if evaluate and data["missing"]:
        _evaluate_missing(app, data)
        with app.catalog.session() as s:
            data = comparison(s, app.store, adapter_names, dataset=dataset, metric=data["metric"], base=base)
    drawn = _plot(app, data, out) if plot else None
    if as_json:
        print_json({**data, "plot": str(drawn)} if drawn else data)
        return
    if markdown:
        click.echo(render_markdown(data))
    else:
        click.echo(f"{data['dataset']}:{data['split']}, {data['metric']} (headline {data['headline']})")
        click.echo(render_text(data))
    if data["missing"]:
        click.echo(
            f"no {data['metric']} evaluation on {data['dataset']}:{data['split']} for "
            f"{', '.join(data['missing'])}; run:\n  {data['evaluate_command']}\n"
            "(or add --evaluate to run it now and wait)",
            err=True,
        )
    if drawn is not None and not markdown:
        click.echo(f"plot: {drawn}")
    elif drawn is not None:
        click.echo(f"plot: {drawn}", err=True)  # stdout stays a Markdown table


def _plot(app: AppContext, data: dict[str, Any], out: Path | None) -> Path:
    from worker.evaluation.compare import plot_comparison

    if out is None:
        stem = "-".join(part.replace(":", "_") for part in (data["dataset"], data["split"], data["metric"]))
        out = app.settings.logs / f"compare-{stem}.png"
    return plot_comparison(data, out)


def _evaluate_missing(app: AppContext, data: dict[str, Any]) -> None:
    from cli.follow import follow_job, raise_unless_succeeded
    from cli.submit import enqueue
    from worker.resolve import resolve_eval_specs

    with app.catalog.session() as s:
        specs = resolve_eval_specs(
            s, app.store, adapters=data["missing_adapters"], bases=data["missing_bases"],
            dataset=f"{data['dataset']}:{data['split']}", metric=data["metric"], template=data["template"],
        )  # fmt: skip
    jobs = [enqueue(app, "eval", spec.to_json(), queue="gpu", priority=0) for spec in specs]
    click.echo(
        f"evaluating {', '.join(data['missing'])}: job(s) {', '.join(str(j.id) for j in jobs)}", err=True
    )
    for job in jobs:
        raise_unless_succeeded(follow_job(app.catalog, job.id))


@adapters.command("evals")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--predictions", "show_rows", is_flag=True,
              help="Print the rows of one evaluation (input, gold, prediction, scores) instead.")  # fmt: skip
@click.option("--eval", "eval_id", type=int, help="The evaluation (id) for --predictions  [default: latest]")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows printed by --predictions.")  # fmt: skip
@pass_app
def evals(
    app: AppContext, name: str, as_json: bool, show_rows: bool, eval_id: int | None, limit: int
) -> None:
    """List the evaluations of adapter NAME, oldest first; with --predictions, what it generated.

    \b
    Example:
        ft adapters evals faults-lora
        ft adapters evals faults-lora --json
        ft adapters evals faults-lora --predictions --limit 5
        ft adapters evals faults-lora --predictions --eval 12 --json
    """
    if show_rows:
        _print_predictions(app, name, eval_id, limit, as_json)
        return
    from catalog.adapters import get_adapter
    from catalog.evaluations import list_evaluations
    from catalog.models import Dataset, PromptTemplate
    from worker.evaluation.metrics import METRICS

    with app.catalog.session() as s:
        adapter = get_adapter(s, name)
        data = []
        for ev in list_evaluations(s, adapter_id=adapter.id):
            metric = METRICS.get(ev.metric)
            data.append({
                "id": ev.id, "adapter": adapter.name, "dataset": s.get_one(Dataset, ev.dataset_id).ref,
                "split": ev.split, "template": s.get_one(PromptTemplate, ev.template_id).ref,
                "metric": ev.metric, "headline": metric.headline if metric else None, "metrics": ev.metrics,
                "generation": ev.generation, "sample_count": ev.sample_count, "seconds": ev.seconds,
                "peak_memory_bytes": ev.peak_memory_bytes, "predictions_uri": ev.predictions_uri,
                "predictions_sha256": ev.predictions_sha256, "job_id": ev.job_id, "created_by": ev.created_by,
                "created_at": ev.created_at,
            })  # fmt: skip
    if as_json:
        print_json(data)
        return
    print_table(
        ["id", "dataset", "metric", "score", "samples", "time", "tok/s", "template", "job", "created"],
        [
            [
                d["id"],
                f"{d['dataset']}:{d['split']}",
                d["metric"],
                f"{d['headline']}={_number(d['metrics'].get(d['headline']))}" if d["headline"] else "-",
                d["sample_count"],
                human_seconds(d["seconds"]),
                _rate(d["metrics"].get("tokens_per_s")),
                d["template"],
                d["job_id"],
                when(d["created_at"]),
            ]
            for d in data
        ],  # fmt: skip
        empty=f"(no evaluations of {name} yet: `ft submit eval {name} --dataset NAME`)",
    )


def _print_predictions(app: AppContext, name: str, eval_id: int | None, limit: int, as_json: bool) -> None:
    """The first `limit` rows of an evaluation's predictions artifact, checked against its sha256."""
    import json

    from catalog.adapters import get_adapter
    from catalog.errors import InvalidInput, NotFound
    from catalog.evaluations import list_evaluations
    from catalog.integrity import verify_artifact
    from worker.evaluation.evaluator import PREDICTIONS

    with app.catalog.session() as s:
        adapter = get_adapter(s, name)
        found = list_evaluations(s, adapter_id=adapter.id)
        if eval_id is not None:
            found = [ev for ev in found if ev.id == eval_id]
        if not found:
            which = f"evaluation {eval_id}" if eval_id is not None else "an evaluation"
            raise NotFound(f"adapter {name} has no {which}: see `ft adapters evals {name}`")
        ev = found[-1]
        uri, sha256, ev_id = ev.predictions_uri, ev.predictions_sha256, ev.id
    if not uri or not sha256:
        raise InvalidInput(f"evaluation {ev_id} of {name} stored no predictions")
    path = verify_artifact(app.store, uri, sha256, f"predictions of evaluation {ev_id}") / PREDICTIONS
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == limit:
                break
    if as_json:
        print_json(rows)
        return
    click.echo(f"evaluation {ev_id} of {name}: the first {len(rows)} rows ({path})")
    for row in rows:
        scores = ", ".join(f"{k}={_number(v)}" for k, v in row.get("scores", {}).items())
        click.echo(f"--- row {row['index']}" + (" (prompt truncated)" if row.get("truncated") else "")
                   + (f"  [{scores}]" if scores else ""))  # fmt: skip
        for key in ("input", "gold", "prediction"):
            value = row[key] if isinstance(row[key], str) else json.dumps(row[key], ensure_ascii=False)
            click.echo(f"  {key}: " + value.replace("\n", "\n    "))
