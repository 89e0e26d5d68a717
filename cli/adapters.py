"""`ft adapters ...`: the registry of trained adapters (list, show, export, rm)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from catalog.models import Adapter
from cli.context import AppContext, pass_app
from cli.output import human_bytes, human_count, human_seconds, print_json, print_table, when


def adapter_dict(a: Adapter) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "method": a.method,
        "base_model": a.base_model.name,
        "dataset": a.dataset.ref,
        "template": a.template.ref,
        "job_id": a.job_id,
        "conversion_id": a.conversion_id,
        "hyperparameters": a.hyperparameters,
        "artifact_uri": a.artifact_uri,
        "sha256": a.sha256,
        "size_bytes": a.size_bytes,
        "trainable_params": a.trainable_params,
        "total_params": a.total_params,
        "trainable_percent": 100.0 * a.trainable_params / a.total_params if a.total_params else None,
        "peak_memory_bytes": a.peak_memory_bytes,
        "train_seconds": a.train_seconds,
        "tokens_seen": a.tokens_seen,
        "final_loss": a.final_loss,
        "metrics": a.metrics,
        "ft_version": a.ft_version,
        "status": a.status,
        "created_by": a.created_by,
        "created_at": a.created_at,
    }


@click.group()
def adapters() -> None:
    """The registry of trained adapters: list, show, compare, evals, export, rm.

    \b
    Example:
        ft adapters list --method lora
        ft adapters show faults-lora
        ft adapters compare faults-lora faults-full --dataset faults --base
        ft adapters export faults-lora ./out --merge
    """


@adapters.command("list")
@click.option("--method", help="Only this training method.")
@click.option("--model", "-m", help="Only adapters of this base model.")
@click.option("--mine", is_flag=True, help="Only adapters I created.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_(app: AppContext, method: str | None, model: str | None, mine: bool, as_json: bool) -> None:
    """List adapters, oldest first.

    \b
    Example:
        ft adapters list
        ft adapters list --method qlora --json
    """
    from catalog.adapters import list_adapters

    with app.catalog.session() as s:
        rows = list_adapters(s, method=method, model=model, user=app.settings.user if mine else None)
        data = [adapter_dict(a) for a in rows]
    if as_json:
        print_json(data)
        return
    print_table(
        ["name", "method", "base", "dataset", "trainable", "%", "loss", "time", "size", "created"],
        [
            [
                d["name"],
                d["method"],
                d["base_model"],
                d["dataset"],
                human_count(d["trainable_params"]),
                f"{d['trainable_percent']:.3f}" if d["trainable_percent"] is not None else "-",
                f"{d['final_loss']:.4f}" if d["final_loss"] is not None else "-",
                human_seconds(d["train_seconds"]),
                human_bytes(d["size_bytes"]),
                when(d["created_at"]),
            ]
            for d in data
        ],  # fmt: skip
        empty="(no adapters yet: `ft submit train --help`)",
    )


@adapters.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show an adapter's lineage, hyper-parameters, cost and artifact. The lineage runs from the adapter
    through the adapters it was continued from (`ft submit train --from`) to its base model.

    \b
    Example:
        ft adapters show faults-lora
    """
    from catalog.adapters import get_adapter, lineage

    with app.catalog.session() as s:
        adapter = get_adapter(s, name)
        d = adapter_dict(adapter)
        chain = [
            {"name": a.name, "method": a.method, "dataset": a.dataset.ref, "job_id": a.job_id,
             "sha256": a.sha256}
            for a in lineage(s, adapter)
        ]  # fmt: skip
    d["parent"] = chain[1]["name"] if len(chain) > 1 else None
    d["lineage"] = chain
    d["path"] = str(app.store.path(d["artifact_uri"]))
    if as_json:
        print_json(d)
        return
    click.echo(
        f"{d['name']}  ({d['method']}, job {d['job_id']}, by {d['created_by']} {when(d['created_at'])})"
    )
    steps = [f"{a['name']} ({a['dataset']}, job {a['job_id']})" for a in chain]
    lines = [
        ("lineage", " <- ".join([*steps, f"{d['base_model']} (base)"])),
        ("base model", d["base_model"]),
        ("dataset", d["dataset"]),
        ("template", d["template"]),
        ("trainable", f"{d['trainable_params']:,} / {d['total_params']:,} ({d['trainable_percent']:.4f}%)"),
        ("peak memory", human_bytes(d["peak_memory_bytes"])),
        ("training time", human_seconds(d["train_seconds"])),
        ("tokens seen", f"{d['tokens_seen']:,}" if d["tokens_seen"] is not None else "-"),
        ("final loss", f"{d['final_loss']:.4f}" if d["final_loss"] is not None else "-"),
        ("artifact", f"{d['path']} ({human_bytes(d['size_bytes'])}, sha256 {d['sha256'][:16]}...)"),
    ]
    curve = metric_curve(d.get("metrics") or {})
    if curve:
        lines.insert(-1, ("eval metric", curve))
    for key, value in lines:
        click.echo(f"  {key:<14}{value}")
    click.echo("  hyper-parameters:")
    for group, values in d["hyperparameters"].items():
        if isinstance(values, dict):
            click.echo(f"    {group}: " + ", ".join(f"{k}={v}" for k, v in values.items() if v is not None))
        else:
            click.echo(f"    {group}: {values}")


def metric_curve(metrics: dict[str, Any]) -> str | None:
    """`--eval-metric`'s curve in one line: "triple-f1 f1 by step: 10 0.21, 20 0.34 (best: 20)"."""
    if not metrics.get("eval_metrics"):
        return None
    from worker.evaluation.metrics import get_metric

    headline = get_metric(metrics["eval_metric"]).headline
    points = ", ".join(f"{step} {m[headline]:.3f}" for step, m in metrics["eval_metrics"].items())
    return f"{metrics['eval_metric']} {headline} by step: {points} (best: {metrics.get('best_step')})"


def best_checkpoint(name: str, src: Path, best_step: int | None) -> Path:
    """The directory of an adapter's best-scoring step: `best/` in its artifact, or the artifact itself
    when the best step was the last one."""
    from catalog.errors import InvalidInput
    from worker.train.scoring import BEST

    if best_step is None:
        raise InvalidInput(f"adapter {name} was trained without --eval-metric: it has no best checkpoint")
    if (src / BEST).is_dir():
        click.echo(f"{name}: the best-scoring step, {best_step}")
        return src / BEST
    click.echo(f"{name}: the best-scoring step, {best_step}, is the last one")
    return src


@adapters.command()
@click.argument("name")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--merge", is_flag=True, help="Merge LoRA/DoRA into the base and write a full model directory.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    default="auto",
    show_default=True,
    help="Weights of a --merge export; auto: the base model's own dtype.",
)
@click.option(
    "--checkpoint",
    type=click.Choice(["last", "best"]),
    default="last",
    show_default=True,
    help="best: the weights of the step that scored best (trained with --eval-metric).",
)
@pass_app
def export(app: AppContext, name: str, dest: Path, merge: bool, dtype: str, checkpoint: str) -> None:
    """Copy an adapter's files to DEST (which must not exist), or merge it into a full model (with a
    model card saying what was merged and in which dtype). An adapter trained with --eval-metric also
    holds the weights of its best-scoring step: --checkpoint best exports those.

    \b
    Example:
        ft adapters export faults-lora ./faults-lora
        ft adapters export faults-lora ./faults-best --checkpoint best
        ft adapters export faults-lora ./faults-merged --merge
        ft adapters export faults-lora ./faults-merged-bf16 --merge --dtype bf16
    """
    from catalog.adapters import get_adapter
    from catalog.errors import Conflict
    from catalog.integrity import verify_artifact
    from catalog.store import MANIFEST
    from worker.train.scoring import BEST

    if dest.exists():
        raise Conflict(f"{dest} already exists: choose a new directory")
    with app.catalog.session() as s:
        a = get_adapter(s, name)
        method, uri, sha256, base = a.method, a.artifact_uri, a.sha256, a.base_model
        best_step = (a.metrics or {}).get("best_step")
    src = verify_artifact(app.store, uri, sha256, f"adapter {name}")
    if checkpoint == "best":
        src = best_checkpoint(name, src, best_step)
    if merge:
        from worker.methods.saving import DTYPES, merge_to_dir
        from worker.models.directories import model_dir

        chosen = base_dtype(base.dtype) if dtype == "auto" else DTYPES[dtype]
        card = {"name": f"{name}-merged", "adapter": name, "adapter_sha256": sha256, "base_model": base.name,
                "base_model_origin": base.origin or base.uri,
                "base_model_id": base.origin if base.source == "hub" else None}  # fmt: skip
        merge_to_dir(model_dir(app.store, base), src, dest, method=method, dtype=chosen, card=card)
        click.echo(f"merged {name} into {base.name} as {chosen}: {dest}")
        return
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(MANIFEST, BEST))
    config = dest / "adapter_config.json"
    if config.is_file():  # peft recorded this machine's path of the base: name what others can resolve
        data = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = base.origin if base.source == "hub" else base.name
        config.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    click.echo(f"exported {name} ({method}) to {dest}")


@adapters.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def rm(app: AppContext, name: str, yes: bool) -> None:
    """Remove an adapter, its evaluations, and its artifact (unless another adapter shares it).

    \b
    Example:
        ft adapters rm faults-lora-2 --yes
    """
    from catalog.adapters import artifact_in_use, remove_adapter

    if not yes:
        click.confirm(f"Remove adapter {name} and its files?", abort=True)
    with app.catalog.session() as s:
        uri = remove_adapter(s, name).artifact_uri
    with app.catalog.session() as s:
        if not artifact_in_use(s, uri):
            app.store.remove(uri)
    click.echo(f"removed adapter {name}")


def base_dtype(recorded: str | None) -> str:
    """The dtype a merged export keeps by default: the base's own (fp32 when it was not recorded, or
    when it is not a float type a model is saved in, e.g. a GGUF's quantised blocks)."""
    return recorded if recorded in ("bfloat16", "float16", "float32") else "float32"
