"""The resolved, typed spec of a training job: what `ft submit train` validates and stores.

Everything is checked before a job is queued: the method and its flags (the method's config
dataclass), the shared hyper-parameters (`TrainConfig`), the names (model, dataset, template), the
splits and the adapter name. The job row stores `TrainSpec.to_json()`, so a job can be re-run or
compared exactly; the worker rebuilds the dataclasses from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from catalog.adapters import check_adapter_name_free
from catalog.errors import InvalidInput, NotFound
from catalog.models import Dataset
from catalog.store import ArtifactStore
from datasets_prep.convert import ConvertSpec, resolve_convert_spec
from worker.methods import get_method
from worker.train_config import TrainConfig


@dataclass
class TrainSpec:
    """A training job, fully resolved."""

    name: str
    """The adapter to register (--name)."""
    method: str
    """A registered training method (--method)."""
    method_config: dict[str, Any]
    """The method's flags, validated by its config dataclass, defaults filled in."""
    train: dict[str, Any]
    """`TrainConfig` as a dict, the method's default lr/optimizer filled in."""
    convert: dict[str, Any]
    """The `ConvertSpec` of the tokenised data (dataset version, template version, model, lengths)."""
    dataset_id: int
    template_id: int
    base_model_id: int
    dataset_ref: str
    template_ref: str
    model_name: str
    parent: str | None = None
    """Reserved for continued training from an existing adapter."""
    notes: dict[str, Any] = field(default_factory=dict)

    def method_cfg(self) -> Any:
        return get_method(self.method).make_config(self.method_config)

    def train_cfg(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    def convert_spec(self) -> ConvertSpec:
        return ConvertSpec.from_json(self.convert)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainSpec:
        return cls(**data)


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
    max_source_len: int | None = None,
    store: ArtifactStore | None = None,
) -> TrainSpec:
    """Validate everything a training job needs; raise InvalidInput/NotFound/Conflict naming the flag.

    Without `template`: the model's chat template when its tokenizer has one, else `plain` (`store`
    locates an imported model's files). Without `max_source_len`: 3/4 of --max-len."""
    spec = get_method(method)
    method_cfg = spec.make_config(method_flags)
    cfg = TrainConfig.from_dict(train_flags).with_method_defaults(spec)
    check_adapter_name_free(session, name)
    convert = resolve_convert_spec(
        session, dataset=dataset, model=model, template=template, max_len=cfg.max_len,
        max_source_len=max_source_len, store=store,
    )  # fmt: skip
    ds = session.get_one(Dataset, convert.dataset_id)
    if "train" not in ds.split_counts:
        raise InvalidInput(f"dataset {ds.ref} has no 'train' split (splits: {', '.join(ds.split_counts)})")
    if cfg.eval_split is not None and cfg.eval_split not in ds.split_counts:
        raise NotFound(
            f"--eval-split {cfg.eval_split!r}: dataset {ds.ref} has splits {', '.join(ds.split_counts)}"
        )
    return TrainSpec(
        name=name,
        method=method,
        method_config=dataclasses.asdict(method_cfg),
        train=cfg.to_dict(),
        convert=convert.to_json(),
        dataset_id=convert.dataset_id,
        template_id=convert.template_id,
        base_model_id=convert.base_model_id,
        dataset_ref=convert.dataset_ref,
        template_ref=convert.template_ref,
        model_name=convert.model_name,
    )
