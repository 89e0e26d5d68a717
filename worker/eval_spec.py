"""The resolved, typed spec of an evaluation job: what `ft submit eval` validates and stores.

One job evaluates any number of models that share a base model: the untuned base and/or adapters
of it. Adapters of several bases in one command make one job per base (`resolve_eval_specs`
returns a list). Everything is checked before a job is queued: names (adapters, base models,
dataset, split, template), the metric and the decoding flags; errors name the flag. The job row
stores `EvalSpec.to_json()`; the worker rebuilds the dataclass from it.

Importing this module is cheap (no torch): the CLI resolves specs with it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from catalog.adapters import get_adapter
from catalog.errors import InvalidInput, NotFound
from catalog.models import Adapter, BaseModel, Dataset, PromptTemplate
from catalog.store import ArtifactStore
from worker.metrics import METRICS, get_metric

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_SPLIT = "test"
DEFAULT_BATCH_SIZE = 64
"""Prompts per batch and model: what the quality and speed runs used (16 decoded 4x slower on an H200)."""
METRIC_SNIFF_ROWS = 20
"""How many gold outputs `infer_metric` looks at."""


@dataclass
class EvalTarget:
    """One model to evaluate: an adapter, or the untuned base (adapter_id None)."""

    label: str
    """What reports and progress call it: the adapter's name, or `MODEL (untuned)`."""
    template_id: int
    template_ref: str
    adapter_id: int | None = None
    adapter: str | None = None
    method: str | None = None
    artifact_uri: str | None = None

    @property
    def is_base(self) -> bool:
        return self.adapter_id is None


@dataclass
class EvalSpec:
    """An evaluation job, fully resolved: one base model, one dataset split, one metric."""

    base_model_id: int
    model_name: str
    dataset_id: int
    dataset_ref: str
    """`name:version` of the dataset."""
    split: str
    """The split evaluated (--dataset NAME[:VERSION][:SPLIT]; default `test`)."""
    metric: str
    """A registered metric (--metric)."""
    targets: list[EvalTarget]
    """The models, in the order given; the untuned base first when asked for (--base)."""
    limit: int | None = None
    """Evaluate only the first N rows of the split (--limit); None: all."""
    max_new_tokens: int = 512
    """Most tokens generated per row (--max-new-tokens)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Prompts per batch for each model (--batch-size): K models evaluated together (stacked LoRA
    adapters and the base) generate batch_size x K rows per batch. Lower it on out-of-memory errors."""
    max_source_len: int = 2048
    """Prompts longer than this many tokens keep their start (--max-source-len), as training does."""
    sample: bool = False
    """Sample instead of greedy decoding (--sample)."""
    temperature: float = 1.0
    """Softmax temperature when sampling (--temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass when sampling (--top-p)."""
    seed: int = 0
    """Seed of the sampler (--seed)."""
    dtype: str = "auto"
    """Weights' dtype (--dtype): auto is bfloat16 on a GPU that supports it, float32 otherwise."""
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.targets = [t if isinstance(t, EvalTarget) else EvalTarget(**t) for t in self.targets]
        if not self.targets:
            raise InvalidInput("nothing to evaluate: name ADAPTERs and/or --base MODEL")
        get_metric(self.metric)
        _positive_int(self.limit, "--limit", optional=True)
        _positive_int(self.max_new_tokens, "--max-new-tokens")
        _positive_int(self.batch_size, "--batch-size")
        _positive_int(self.max_source_len, "--max-source-len")
        _positive_int(self.seed, "--seed", minimum=0)
        if not isinstance(self.temperature, int | float) or not self.temperature > 0:
            raise InvalidInput(f"--temperature must be greater than 0, got {self.temperature!r}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise InvalidInput(f"--top-p must be in (0, 1], got {self.top_p!r}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def generation_settings(self) -> dict[str, Any]:
        """The decoding flags, as recorded with each evaluation."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "max_source_len": self.max_source_len,
            "sample": self.sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "limit": self.limit,
            "stop_on_repeated_line": get_metric(self.metric).stop_on_repeated_line,
        }

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"eval spec has unknown field(s) {', '.join(unknown)} (written by a newer ft?)"
            )
        return cls(**data)


def _positive_int(value: Any, flag: str, *, optional: bool = False, minimum: int = 1) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{flag} must be a whole number, got {value!r}")
    if value < minimum:
        raise InvalidInput(f"{flag} must be at least {minimum}, got {value}")


# ---------------------------------------------------------------- names


def parse_dataset_ref(ref: str) -> tuple[str, int | None, str]:
    """`NAME[:VERSION][:SPLIT]` -> (name, version or None for the latest, split; default `test`).

    A number after the name is a version, anything else a split: `faults`, `faults:2`,
    `faults:dev`, `faults:2:dev`."""
    name, *rest = ref.split(":")
    version: int | None = None
    split = DEFAULT_SPLIT
    if len(rest) == 2 and rest[0].isdigit() and rest[1]:
        version, split = int(rest[0]), rest[1]
    elif len(rest) == 1 and rest[0].isdigit():
        version = int(rest[0])
    elif len(rest) == 1 and rest[0]:
        split = rest[0]
    elif rest:
        raise InvalidInput(
            f"--dataset {ref!r}: expected NAME, NAME:SPLIT, NAME:VERSION or NAME:VERSION:SPLIT"
        )
    if not name:
        raise InvalidInput(f"--dataset {ref!r}: the dataset name is missing")
    return name, version, split


def resolve_dataset(session: Session, ref: str) -> tuple[Dataset, str]:
    """The dataset version and split named by `--dataset NAME[:VERSION][:SPLIT]`."""
    from datasets_prep.register import get_dataset

    name, version, split = parse_dataset_ref(ref)
    dataset = get_dataset(session, name if version is None else f"{name}:{version}")
    if split not in dataset.split_counts:
        splits = ", ".join(f"{k} ({v} rows)" for k, v in dataset.split_counts.items())
        raise NotFound(f"--dataset {ref}: dataset {dataset.ref} has no split {split!r} (splits: {splits})")
    return dataset, split


def looks_like_triples(outputs: Sequence[str]) -> bool:
    """Whether most non-blank output lines are `head_relation_tail` triples."""
    lines = [line.strip() for text in outputs for line in text.split("\n") if line.strip()]
    return bool(lines) and sum(len(line.split("_")) == 3 for line in lines) >= 0.8 * len(lines)


def infer_metric(store: ArtifactStore, dataset: Dataset, split: str) -> str:
    """The default --metric: `triple-f1` when the split's gold outputs look like triples, else
    `bleu-rouge-zh` (free text)."""
    from datasets_prep.canonical import load_split

    outputs = [row.output for row in itertools.islice(load_split(store, dataset, split), METRIC_SNIFF_ROWS)]
    return "triple-f1" if looks_like_triples(outputs) else "bleu-rouge-zh"


def _get_base(session: Session, name: str) -> BaseModel:
    from worker.base_models import get_base_model

    try:
        return get_base_model(session, name)
    except NotFound as exc:
        raise NotFound(f"--base: {exc}") from None


def _default_template(store: ArtifactStore, model: BaseModel) -> str:
    from datasets_prep.convert import local_model_dir
    from datasets_prep.templates import default_template_name

    return default_template_name(local_model_dir(store, model))


def _template(session: Session, ref: str) -> PromptTemplate:
    from datasets_prep.templates import get_template

    try:
        return get_template(session, ref)
    except NotFound as exc:
        raise NotFound(f"--template: {exc}") from None


# ---------------------------------------------------------------- resolve


def resolve_eval_specs(
    session: Session,
    store: ArtifactStore,
    *,
    adapters: Sequence[str] = (),
    bases: Sequence[str] = (),
    dataset: str,
    metric: str | None = None,
    template: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_source_len: int = 2048,
    sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    dtype: str = "auto",
) -> list[EvalSpec]:
    """Validate an evaluation request; one EvalSpec per base model, in the order first named.

    Each adapter is prompted with the template it was trained with unless `template` is given.
    The untuned base uses `template`, else the template its adapters in this request share, else its
    tokenizer's chat template when it has one, else `plain`. Raises InvalidInput/NotFound naming the flag.
    """
    if not adapters and not bases:
        raise InvalidInput("nothing to evaluate: name one or more ADAPTERs and/or --base MODEL")
    if not sample and (temperature is not None or top_p is not None):
        flag = "--temperature" if temperature is not None else "--top-p"
        raise InvalidInput(f"{flag} applies to sampling only: add --sample (decoding is greedy by default)")
    ds, split = resolve_dataset(session, dataset)
    if metric is None:
        metric = infer_metric(store, ds, split)
    elif metric not in METRICS:
        raise InvalidInput(f"--metric {metric!r}: choose one of {', '.join(sorted(METRICS))}")
    override = _template(session, template) if template else None

    rows: list[Adapter] = []
    for name in dict.fromkeys(adapters):  # a name given twice is evaluated once
        adapter = get_adapter(session, name)
        if adapter.status != "ready":
            raise InvalidInput(f"adapter {name} is {adapter.status}, not ready: it cannot be evaluated")
        rows.append(adapter)
    models: dict[int, BaseModel] = {}
    for adapter in rows:
        models.setdefault(adapter.base_model_id, adapter.base_model)
    untuned = [_get_base(session, name) for name in dict.fromkeys(bases)]
    for model in untuned:
        models.setdefault(model.id, model)

    specs = []
    for model_id, model in models.items():
        own = [a for a in rows if a.base_model_id == model_id]
        targets = []
        if any(m.id == model_id for m in untuned):
            shared = {a.template_id for a in own}
            tpl = override or (
                own[0].template if len(shared) == 1 else _template(session, _default_template(store, model))
            )
            targets.append(
                EvalTarget(label=f"{model.name} (untuned)", template_id=tpl.id, template_ref=tpl.ref)
            )
        for a in own:
            tpl = override or a.template
            targets.append(
                EvalTarget(
                    label=a.name, template_id=tpl.id, template_ref=tpl.ref, adapter_id=a.id, adapter=a.name,
                    method=a.method, artifact_uri=a.artifact_uri,
                )
            )  # fmt: skip
        specs.append(
            EvalSpec(
                base_model_id=model_id, model_name=model.name, dataset_id=ds.id, dataset_ref=ds.ref,
                split=split, metric=metric, targets=targets, limit=limit, max_new_tokens=max_new_tokens,
                batch_size=batch_size, max_source_len=max_source_len, sample=sample,
                temperature=1.0 if temperature is None else temperature,
                top_p=1.0 if top_p is None else top_p, seed=seed, dtype=dtype,
            )
        )  # fmt: skip
    return specs


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


# ---------------------------------------------------------------- comparison


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
    ds, split = resolve_dataset(session, dataset)
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
