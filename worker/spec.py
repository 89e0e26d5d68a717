"""The typed job specs, resolved once at submit (worker/resolve.py) and stored as JSON in the job row.

    TrainSpec(name, method, method_config: <the method's config>, train: TrainConfig, data: ConvertSpec)
    EvalSpec(base model, dataset split, metric, targets: [EvalTarget], decoding: Decoding, ...)

A worker rebuilds them with `from_json`, which is strict: an unknown key, a missing one or a value
of the wrong type fails with the key's name (datasets_prep.spec.strict_from_json), so a spec from
another ft version is refused, never half-read. Nothing is looked up or defaulted again after that.
Importing this module is cheap (no torch): the CLI builds specs with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from catalog.errors import InvalidInput
from datasets_prep.spec import ConvertSpec, strict_from_json
from worker.evaluation.decoding import Decoding
from worker.evaluation.metrics import get_metric
from worker.methods import Method, get_method
from worker.train.config import TrainConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
TRAIN_KEYS = ("name", "method", "method_config", "train", "data", "parent", "notes")


@dataclass
class ParentRef:
    """The adapter a continued training starts from (`--from`), pinned at submit: the worker loads that
    artifact, verified against this sha256, whatever happens to the name meanwhile."""

    name: str
    adapter_id: int
    artifact_uri: str
    sha256: str


@dataclass
class TrainSpec:
    """A training job, fully resolved: the method's config and the training config have every default
    filled in (the method's lr, epochs and optimizer included), the data is one conversion."""

    name: str
    """The adapter to register (--name)."""
    method: str
    """A registered training method (--method)."""
    method_config: Any
    """The method's config dataclass (`get_method(method).config`), validated."""
    train: TrainConfig
    data: ConvertSpec
    """The tokenised data: dataset version, template version, tokenizer, lengths."""
    parent: ParentRef | None = None
    """The registered adapter whose weights training starts from (`--from`), or None."""
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = self.registered()
        if not isinstance(self.method_config, method.config):
            raise TypeError(f"--method {self.method} takes a {method.config.__name__} config")
        if self.train.lr is None or self.train.epochs is None or self.train.optimizer is None:
            raise InvalidInput("a training spec needs a resolved config (lr, epochs and optimizer set)")
        sharded = not method.artifact.shares_base and self.train.gpus > 1 and self.train.fsdp
        if sharded and self.train.eval_metric is not None:
            raise InvalidInput("--eval-metric cannot generate with a sharded (FSDP) full job: add --no-fsdp")

    def registered(self) -> Method:
        return get_method(self.method)

    @property
    def dataset_ref(self) -> str:
        return self.data.dataset_ref

    @property
    def template_ref(self) -> str:
        return self.data.template_ref

    @property
    def model_name(self) -> str:
        return self.data.model_name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "method_config": dataclasses.asdict(self.method_config),
            "train": dataclasses.asdict(self.train),
            "data": self.data.to_json(),
            "parent": dataclasses.asdict(self.parent) if self.parent else None,
            "notes": dict(self.notes),
        }

    @classmethod
    def from_json(cls, data: Any) -> TrainSpec:
        if not isinstance(data, dict):
            raise InvalidInput("training spec must be a JSON object")
        unknown = sorted(set(data) - set(TRAIN_KEYS))
        missing = sorted({"name", "method", "method_config", "train", "data"} - set(data))
        if unknown or missing:
            raise InvalidInput(
                f"training spec: unknown key(s) {unknown} / missing key(s) {missing} (written by another ft?)"
            )
        method = get_method(data["method"])
        return cls(
            name=_typed(data["name"], str, "name"),
            method=method.name,
            method_config=strict_from_json(
                method.config, data["method_config"], what="training spec method_config"
            ),
            train=strict_from_json(TrainConfig, data["train"], what="training spec train"),
            data=strict_from_json(ConvertSpec, data["data"], what="training spec data"),
            parent=None
            if data.get("parent") is None
            else strict_from_json(ParentRef, data["parent"], what="training spec parent"),
            notes=_typed(data.get("notes", {}), dict, "notes"),
        )


def _typed(value: Any, types: Any, key: str) -> Any:
    if not isinstance(value, types):
        raise InvalidInput(f"training spec: {key} has the wrong type ({type(value).__name__})")
    return value


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
    artifact_sha256: str | None = None
    """The sha256 the catalog recorded for the artifact, checked before it is loaded."""

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
    decoding: Decoding = field(default_factory=Decoding)
    limit: int | None = None
    """Evaluate only the first N rows of the split (--limit); None: all."""
    max_source_len: int = 2048
    """Prompts longer than this many tokens keep their start (--max-source-len), as training does."""
    dtype: str = "auto"
    """Weights' dtype (--dtype): auto is bfloat16 on a GPU that supports it, float32 otherwise."""
    fused_kernels: bool = True
    """Liger's RMSNorm, RoPE and SwiGLU kernels on a CUDA GPU, as training uses them: fewer kernels a
    decoding step (--no-fused-kernels: transformers' own; no effect on a CPU)."""
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets:
            raise InvalidInput("nothing to evaluate: name ADAPTERs and/or --base MODEL")
        get_metric(self.metric)
        for value, flag in ((self.limit, "--limit"), (self.max_source_len, "--max-source-len")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidInput(f"{flag} must be a whole number, got {value!r}")
            if value is not None and value < 1:
                raise InvalidInput(f"{flag} must be at least 1, got {value}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def generation_settings(self) -> dict[str, Any]:
        """The decoding settings, as recorded with each evaluation."""
        return {
            **dataclasses.asdict(self.decoding),
            "max_source_len": self.max_source_len,
            "limit": self.limit,
            "stop_on_repeated_line": get_metric(self.metric).stop_on_repeated_line,
        }

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EvalSpec:
        return strict_from_json(cls, data, what="evaluation spec")
