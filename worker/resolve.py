"""Resolving what a user asked for into typed specs, once, at submit: names become catalog rows,
flags become validated dataclasses with every default filled in; errors name the flag.

    resolve_train_spec(session, name=..., method="lora", model="smol", dataset="faults",
                       method_flags={"rank": 16}, train_flags={"epochs": 2}, store=store)
    resolve_eval_specs(session, store, adapters=["faults-lora"], bases=["smol"], dataset="faults:test")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from catalog.adapters import check_adapter_name_free, get_adapter
from catalog.base_models import get_base_model, local_dir
from catalog.datasets import get_dataset_split
from catalog.errors import InvalidInput, NotFound
from catalog.models import Adapter, BaseModel, Dataset, PromptTemplate
from catalog.store import ArtifactStore
from catalog.templates import get_template
from datasets_prep.convert import resolve_convert_spec
from datasets_prep.lengths import DEFAULT_MAX_LEN
from datasets_prep.spec import strict_from_json
from datasets_prep.templates import default_template_name
from worker.evaluation.decoding import DEFAULT_BATCH_SIZE, Decoding
from worker.evaluation.metrics import METRICS
from worker.evaluation.metrics.infer import infer_metric
from worker.methods import Method, get_method
from worker.spec import EvalSpec, EvalTarget, ParentRef, TrainSpec
from worker.train.config import TrainConfig


def resolve_train_spec(
    session: Session,
    *,
    name: str,
    method: str,
    model: str,
    dataset: str,
    template: str | None = None,
    method_flags: dict[str, Any],
    train_flags: dict[str, Any],
    max_len: int = DEFAULT_MAX_LEN,
    max_source_len: int | None = None,
    store: ArtifactStore | None = None,
    parent: str | None = None,
) -> TrainSpec:
    """Validate everything a training job needs; raise InvalidInput/NotFound/Conflict naming the flag.

    Without `template`: the model's chat template when its tokenizer has one, else `plain` (`store`
    locates an imported model's files). Without `max_source_len`: 3/4 of --max-len. With `parent`
    (`--from ADAPTER`): the same method and base as that adapter, its template unless one is given,
    and its method settings (only the method's `keeps_on_continue` flags may differ)."""
    registered = get_method(method)
    parent_row = _parent(session, parent, registered, model) if parent else None
    if parent_row is not None:
        template = template or parent_row.template.ref
        method_flags = _continued_flags(registered, parent_row, method_flags)
    method_cfg = registered.make_config(method_flags)
    cfg = TrainConfig.from_dict(train_flags).with_method_defaults(registered)
    check_adapter_name_free(session, name)
    convert = resolve_convert_spec(
        session, dataset=dataset, model=model, template=template, max_len=max_len,
        max_source_len=max_source_len, store=store,
    )  # fmt: skip
    ds = session.get_one(Dataset, convert.dataset_id)
    if "train" not in ds.split_counts:
        raise InvalidInput(f"dataset {ds.ref} has no 'train' split (splits: {', '.join(ds.split_counts)})")
    if cfg.eval_split is not None and cfg.eval_split not in ds.split_counts:
        raise NotFound(
            f"--eval-split {cfg.eval_split!r}: dataset {ds.ref} has splits {', '.join(ds.split_counts)}"
        )
    ref = None
    if parent_row is not None:
        ref = ParentRef(parent_row.name, parent_row.id, parent_row.artifact_uri, parent_row.sha256)
    return TrainSpec(
        name=name, method=registered.name, method_config=method_cfg, train=cfg, data=convert, parent=ref
    )


def _parent(session: Session, name: str, method: Method, model: str) -> Adapter:
    try:
        adapter = get_adapter(session, name)
    except NotFound as exc:
        raise NotFound(f"--from: {exc}") from None
    if adapter.status != "ready":
        raise InvalidInput(f"--from {name}: the adapter is {adapter.status}, not ready")
    if method.continues is not None:
        raise InvalidInput(f"--from {name}: --method {method.name}: {method.continues}")
    if adapter.method != method.name:
        raise InvalidInput(
            f"--from {name} was trained with --method {adapter.method}: continue it with --method "
            f"{adapter.method} (or leave --method out)"
        )
    base = get_base_model(session, model)
    if adapter.base_model_id != base.id:
        raise InvalidInput(
            f"--from {name} was trained on base model {adapter.base_model.name}, not {base.name}: "
            f"continue it with -m {adapter.base_model.name} (or leave --model out)"
        )
    return adapter


def _continued_flags(method: Method, parent: Adapter, given: dict[str, Any]) -> dict[str, Any]:
    """The parent's method settings, with the given flags that may differ (refusing the others)."""
    saved = parent.hyperparameters.get("method") or {}
    names = [f.name for f in dataclasses.fields(method.config)]
    typed = strict_from_json(method.config, {k: v for k, v in saved.items() if k in names}, what="--from")
    inherited = {k: getattr(typed, k) for k in names if k in saved}  # fields added since: today's default
    for key, value in given.items():
        if key in inherited and inherited[key] != value and key not in method.keeps_on_continue:
            free = ", ".join("--" + k.replace("_", "-") for k in method.keeps_on_continue) or "none"
            raise InvalidInput(
                f"--{key.replace('_', '-')} {value}: --from {parent.name} was trained with "
                f"{inherited[key]!r}; a continued adapter keeps its parent's settings (it may change {free})"
            )
    return {**inherited, **given}


# ---------------------------------------------------------------- evaluation


def _get_base(session: Session, name: str) -> BaseModel:
    try:
        return get_base_model(session, name)
    except NotFound as exc:
        raise NotFound(f"--base: {exc}") from None


def _default_template(store: ArtifactStore, model: BaseModel) -> str:
    return default_template_name(local_dir(store, model))


def _template(session: Session, ref: str) -> PromptTemplate:
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
    max_new_tokens: int = Decoding.max_new_tokens,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_source_len: int = EvalSpec.max_source_len,
    sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    dtype: str = EvalSpec.dtype,
    fused_kernels: bool = EvalSpec.fused_kernels,
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
    ds, split = get_dataset_split(session, dataset)
    if metric is None:
        metric = infer_metric(store, ds, split)
    elif metric not in METRICS:
        raise InvalidInput(f"--metric {metric!r}: choose one of {', '.join(sorted(METRICS))}")
    override = _template(session, template) if template else None
    decoding = Decoding(
        max_new_tokens=max_new_tokens, batch_size=batch_size, sample=sample, seed=seed,
        temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p,
    )  # fmt: skip

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
                    method=a.method, artifact_uri=a.artifact_uri, artifact_sha256=a.sha256,
                )
            )  # fmt: skip
        specs.append(
            EvalSpec(
                base_model_id=model_id, model_name=model.name, dataset_id=ds.id, dataset_ref=ds.ref,
                split=split, metric=metric, targets=targets, decoding=decoding, limit=limit,
                max_source_len=max_source_len, dtype=dtype, fused_kernels=fused_kernels,
            )
        )  # fmt: skip
    return specs
