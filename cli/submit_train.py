"""`ft submit train`: validate a whole training spec, record it, enqueue it.

Values come from three layers, later ones winning: the dataclasses' defaults, `--config FILE.yaml`
(flat keys), then flags and `-o key=value`. Each key belongs to the job (model, dataset, ...), to
the shared `TrainConfig`, or to the chosen method's config; a key that belongs nowhere, or to
another method, is refused with the flag that would fix it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import yaml

from catalog.errors import InvalidInput
from cli.context import AppContext, pass_app
from cli.flags import apply, dataclass_options
from cli.submit import enqueue, report_again, report_submitted, row_lengths, submit, submit_options

DATA_KEYS = ("max_len", "max_source_len")
"""Fields of the data spec (datasets_prep.spec.ConvertSpec) that are flags of `ft submit train`."""
JOB_KEYS = ("method", "model", "dataset", "template", "name", "parent", *DATA_KEYS)


def _options(f: Any) -> Any:
    from datasets_prep.spec import ConvertSpec
    from worker.methods import METHODS
    from worker.train.config import TrainConfig

    opts = [
        click.option("--method", type=click.Choice(sorted(METHODS)), help="Training method."),
        click.option("--model", "-m", help="Base model (`ft models list`)."),
        click.option("--dataset", "-d", help="Dataset, NAME or NAME:VERSION; its `train` split is used."),
        click.option("--template", "-t", help="Prompt template, NAME or NAME:VERSION  [default: chat if the "
                     "model's tokenizer has a chat template, else plain]"),
        click.option("--name", "-n", help="Adapter name  [default: DATASET-METHOD, numbered if taken]"),
        click.option("--from", "parent", metavar="ADAPTER", help="Continue training a registered adapter: "
                     "start from its weights, with its method, base, template and method settings "
                     "[default of --method, --model, --dataset, --template: the parent's]."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="YAML file of flat keys (any flag's name with _); flags override it."),
        click.option("--dry-run", is_flag=True, help="Resolve and check everything, print the spec and what "
                     "the length limits do to the rows; queue nothing."),
        click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Set any option, e.g. -o warmup_ratio=0.1 -o scheduler=linear (repeatable)."),
        *dataclass_options([(None, ConvertSpec)], only=DATA_KEYS),
        *dataclass_options([(None, TrainConfig)]),
        *dataclass_options((name, method.config) for name, method in sorted(METHODS.items())),
    ]  # fmt: skip
    return apply(opts, f)


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvalidInput(f"-o {text!r}: expected KEY=VALUE, e.g. -o warmup_ratio=0.1")
    return key.strip().replace("-", "_"), yaml.safe_load(value) if value.strip() else None


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"--config {path}: no such file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--config {path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(f"--config {path}: expected a mapping of keys to values at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def split_keys(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(job keys, TrainConfig keys, method keys); refuses keys that belong to none of them."""
    from worker.methods import METHODS, get_method
    from worker.train.config import TrainConfig

    method = values.get("method")
    if not method:
        raise InvalidInput(f"missing --method: choose one of {', '.join(sorted(METHODS))}")
    spec = get_method(method)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    method_fields = {f.name for f in dataclasses.fields(spec.config)}
    job, train, meth = {}, {}, {}
    for key, value in values.items():
        if key in JOB_KEYS:
            job[key] = value
        elif key in train_fields:
            train[key] = value
        elif key in method_fields:
            meth[key] = value
        else:
            owners = [n for n, m in METHODS.items() if key in {f.name for f in dataclasses.fields(m.config)}]
            flag = "--" + key.replace("_", "-")
            if owners:
                raise InvalidInput(
                    f"{flag} does not apply to --method {method} (it is for {', '.join(owners)})"
                )
            raise InvalidInput(
                f"unknown option {key!r}: training options are {', '.join(sorted(train_fields))}; "
                f"--method {method} takes {', '.join(sorted(method_fields)) or 'none'}"
            )
    return job, train, meth


def parent_defaults(app: AppContext, name: str) -> dict[str, Any]:
    """`--from ADAPTER`: its method, base and dataset, for the flags not given."""
    from catalog.adapters import get_adapter
    from catalog.errors import NotFound

    with app.catalog.session() as s:
        try:
            parent = get_adapter(s, name)
        except NotFound as exc:
            raise NotFound(f"--from: {exc}") from None
        return {"method": parent.method, "model": parent.base_model.name, "dataset": parent.dataset.ref}


def _sampled(max_samples: int | None, rows: int) -> str:
    return (
        f"; --max-samples {max_samples}: {max_samples:,} of them are trained on"
        if max_samples and max_samples < rows
        else ""
    )


def default_adapter_name(app: AppContext, dataset: str, method: str) -> str:
    from catalog.adapters import check_adapter_name_free
    from catalog.errors import Conflict

    base = f"{dataset.partition(':')[0]}-{method}"
    with app.catalog.session() as s:
        for n in range(1, 1000):
            candidate = base if n == 1 else f"{base}-{n}"
            try:
                check_adapter_name_free(s, candidate)
                return candidate
            except Conflict:
                continue
    raise InvalidInput("could not pick a free adapter name: give one with --name")


@submit.command("train")
@_options
@submit_options(default_queue="gpu")
@pass_app
def train(app: AppContext, config_file: Path | None, overrides: tuple[str, ...], dry_run: bool,
          priority: int, queue: str, idempotency_key: str | None, wait: bool, as_json: bool,
          **flags: Any) -> None:  # fmt: skip
    """Train an adapter with --method on a worker and register it.

    Methods: freeze, ptuning, ptuning-v2, lora (--dora, --base-bits 8), qlora, full.
    The whole spec is validated before anything is queued and stored resolved in the job row.
    Without --wait the job id is printed at once.

    \b
    Example:
        ft submit train --method qlora --model qwen --dataset faults --name faults-qlora
        ft submit train --method lora -m smol -d faults --name faults-lora --wait
        ft submit train --method lora --rank 16 --dora -m smol -d faults -t plain --epochs 3
        ft submit train --method freeze --layers 4 -m smol -d faults --lr 5e-5
        ft submit train --config recipe.yaml -o lr=1e-4 -o warmup_ratio=0.1
        ft submit train --from faults-lora -d faults-2025 --epochs 2 --name faults-lora-2025
        ft submit train --method lora -m smol -d faults --max-len 512 --dry-run
        ft submit train --method lora -m smol -d faults --max-samples 200 --epochs 1
    """
    from worker.resolve import resolve_train_spec

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(dict(parse_override(o) for o in overrides))
    if values.get("parent"):
        values = {**parent_defaults(app, str(values["parent"])), **values}
    job, train_keys, method_keys = split_keys(values)
    for required in ("model", "dataset"):
        if not job.get(required):
            raise InvalidInput(f"missing --{required}")
    if idempotency_key:
        from catalog.jobs import find_by_key

        existing = find_by_key(app.catalog, app.settings.user, idempotency_key)
        if existing is not None:  # it holds the adapter name itself: answer it before resolving
            report_again(app, existing, idempotency_key, wait=wait, as_json=as_json)
            return
    name = job.get("name") or default_adapter_name(app, str(job["dataset"]), str(job["method"]))
    with app.catalog.session() as s:
        spec = resolve_train_spec(
            s, name=name, method=job["method"], model=job["model"], dataset=job["dataset"],
            template=job.get("template"), method_flags=method_keys, train_flags=train_keys,
            **{k: job[k] for k in DATA_KEYS if job.get(k) is not None}, store=app.store,
            parent=job.get("parent"),
        )  # fmt: skip
        report = row_lengths(app, s, spec.data)
    if report is not None:  # stderr: --json keeps stdout to the JSON
        click.echo(report.line() + _sampled(spec.train.max_samples, report.rows), err=True)
    if dry_run:
        from cli.output import print_json

        memory = memory_estimate(app, spec, report)
        if as_json:
            print_json({"spec": spec.to_json(), "lengths": report.to_json() if report else None,
                        "memory": memory})  # fmt: skip
        else:
            click.echo(yaml.safe_dump(spec.to_json(), sort_keys=False, allow_unicode=True), nl=False)
            if memory is not None:
                click.echo(f"memory: {memory['describe']}", err=True)
            click.echo("dry run: nothing was queued", err=True)
        return
    if report is not None:
        from datasets_prep.length_report import check_lengths

        check_lengths(report)
    job_row = enqueue(
        app, "train", spec.to_json(), queue=queue, priority=priority, idempotency_key=idempotency_key,
        adapter_name=spec.name,
    )  # fmt: skip
    if not as_json:
        start = f", from {spec.parent.name}" if spec.parent else ""
        click.echo(
            f"adapter {spec.name}: --method {spec.method} on {spec.dataset_ref} ({spec.model_name}){start}",
            err=True,
        )
    report_submitted(app, job_row, wait=wait, as_json=as_json)


def memory_estimate(app: AppContext, spec: Any, report: Any) -> dict[str, Any] | None:
    """The job's peak GPU memory as worker/train/memory.py estimates it on a GPU with Liger's kernels
    (what a worker with `ft[gpu]` runs), for the longest row the length report saw (else --max-len);
    None when the base's config.json is not on this machine or its architecture is not one it reads."""
    from catalog.models import BaseModel
    from worker.models.directories import model_dir
    from worker.train.memory import UnknownShape, estimate_peak

    with app.catalog.session() as s:
        base = s.get_one(BaseModel, spec.data.base_model_id)
        config_path = model_dir(app.store, base) / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    longest = report.stats.max_length if report is not None and report.stats.max_length else spec.data.max_len
    try:
        est = estimate_peak(
            config, spec.method, spec.method_config, spec.train, longest_row=longest, cuda=True
        )
    except UnknownShape:
        return None
    text = est.describe()
    if spec.train.gradient_checkpointing is None:
        text += " (unset: a worker turns it on only if the job does not fit its GPU without it)"
    return {"peak_bytes": est.total_bytes, "micro_tokens": est.micro_tokens, "describe": text}
