"""What a trained method leaves behind, and how it is used again: the three artifact formats.

A method names its format (`register_method(..., artifact=PEFT)`); the format, not the caller, knows
how to save the trained model, how to load it for inference, and how to put it on a base model that
is already loaded (an evaluation evaluates many artifacts on one base):

- `PEFT` (lora, qlora, ptuning, ptuning-v2): `adapter_config.json` + `adapter_model.safetensors`, as
  peft's `save_pretrained` writes them; put on a base with `PeftModel`. One `PeftModel` holds every
  adapter of one peft type, so a group of them is switched, or (plain LoRA) stacked
  (worker/evaluation/multi_lora.py);
- `FREEZE`: the trained tensors in `freeze_weights.safetensors` + `freeze_manifest.json` (names,
  dtype, base model facts); put on a base by swapping those tensors in, and back out after;
- `FULL`: an ordinary model directory (safetensors + config + tokenizer): it is its own model.

Nothing here imports torch or peft at import time (the CLI lists methods without them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.errors import InvalidInput

FREEZE_WEIGHTS = "freeze_weights.safetensors"
FREEZE_MANIFEST = "freeze_manifest.json"
PEFT_CONFIG = "adapter_config.json"


class OnBase:
    """Artifacts of one format (and one group) put on a loaded base model; `use(key)` yields the
    model as that artifact makes it, `plain()` the untuned base, `close()` gives the base back."""

    stackable: Any = None
    """A peft model whose plain-LoRA adapters can be served in shared batches, or None."""

    def use(self, key: str) -> Any:  # a context manager
        raise NotImplementedError

    def plain(self) -> Any:  # a context manager
        raise NotImplementedError

    def close(self) -> Any:
        """Undo what was put on the base; returns the base model."""
        raise NotImplementedError


@dataclass(frozen=True)
class ArtifactFormat:
    """One way of saving and re-using what a method trained."""

    kind: str
    """Written into the artifact's ft_artifact.json and model card."""
    library: str
    """The model card's `library_name`."""
    about: str
    """What the artifact holds, for the model card."""
    usage: str
    """How to use it outside ft, for the model card."""
    write: Callable[[Any, Path, Any, dict[str, Any]], None] = field(repr=False)
    """write(model, out_dir, tokenizer, card): the weights (and whatever they need) into out_dir."""
    load: Callable[..., Any] = field(repr=False)
    """load(base_model_dir, artifact_dir, load_base=...) -> the model ready to generate."""
    shares_base: bool = True
    """False: the artifact is a whole model and is loaded on its own."""
    group_of: Callable[[Path], str] = field(default=lambda artifact: "", repr=False)
    """Which artifacts of this format can sit on one base together (peft: one peft type)."""
    put_on: Callable[[Any, dict[str, Path]], OnBase] | None = field(default=None, repr=False)
    """put_on(base, {key: artifact_dir}) for one group."""
    continue_from: Callable[[Any, Path], None] | None = field(default=None, repr=False)
    """continue_from(prepared_model, parent_dir): the parent's trained tensors into a model its method
    just prepared, for `--from ADAPTER` (a format that is a whole model is loaded from instead)."""

    def save(
        self,
        model: Any,
        out: Path,
        tokenizer: Any = None,
        card: dict[str, Any] | None = None,
        state_dict: dict[str, Any] | None = None,
    ) -> None:
        """`state_dict`: the weights to write instead of the model's own (a sharded model's, gathered:
        worker/train/sharding.py); whole-model formats only."""
        if state_dict is None:
            self.write(model, out, tokenizer, dict(card or {}))
        elif self.shares_base:
            raise ValueError(f"a {self.kind} artifact is written from its model, not from a state dict")
        else:
            self.write(model, out, tokenizer, dict(card or {}), state_dict=state_dict)


# ---------------------------------------------------------------- peft


def _write_peft(model: Any, out: Path, tokenizer: Any, card: dict[str, Any]) -> None:
    if not hasattr(model, "peft_config"):
        raise TypeError(f"a peft artifact needs a peft model, got a {type(model).__name__}")
    model.save_pretrained(out, safe_serialization=True)


def _load_peft(base_model_dir: Path, artifact: Path, *, load_base: Callable[[Path], Any]) -> Any:
    from peft import PeftModel

    check_peft(artifact)
    return PeftModel.from_pretrained(load_base(base_model_dir), artifact)


def check_peft(artifact: Path) -> None:
    if not (artifact / PEFT_CONFIG).is_file():
        raise InvalidInput(f"{artifact} holds no peft adapter ({PEFT_CONFIG} is missing)")


def peft_type(artifact: Path) -> str:
    check_peft(artifact)
    return str(json.loads((artifact / PEFT_CONFIG).read_text())["peft_type"])


class _PeftOnBase(OnBase):
    """Every adapter of one peft type in one PeftModel: the first with `from_pretrained`, the rest
    with `load_adapter`; `use` sets the active one."""

    def __init__(self, base: Any, artifacts: dict[str, Path]):
        from peft import PeftModel

        keys = list(artifacts)
        self.kind = peft_type(artifacts[keys[0]])
        self.peft = PeftModel.from_pretrained(base, artifacts[keys[0]], adapter_name=keys[0])
        for key in keys[1:]:
            self.peft.load_adapter(artifacts[key], adapter_name=key)
        self.stackable = self.peft if self.kind == "LORA" else None

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        self.peft.set_adapter(key)
        yield self.peft

    @contextmanager
    def plain(self) -> Iterator[Any]:
        """The model with its LoRA adapters off (peft's `disable_adapter` yields nothing: the model is
        this one)."""
        if self.kind != "LORA":
            raise ValueError(f"a {self.kind} peft model has no untuned mode")
        with self.peft.disable_adapter():
            yield self.peft

    def close(self) -> Any:
        # LoRA layers are unwrapped back to the original modules; prompt learning wraps none.
        return self.peft.unload() if self.kind == "LORA" else self.peft.get_base_model()


def _continue_peft(model: Any, parent: Path) -> None:
    """The parent adapter's tensors into the new (same-shaped) adapter `default`; every trainable
    tensor must come from the parent, and the parent must have nothing the new adapter lacks."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_peft(parent)
    weights = load_file(parent / "adapter_model.safetensors")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise InvalidInput(
            f"{parent}: the parent adapter has tensors the new one lacks ({result.unexpected_keys[0]}): "
            "was it trained with other --target or --rank?"
        )
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    if len(unchanged) == len(before):
        raise InvalidInput(f"{parent}: no tensor of the parent adapter matched the new adapter's")


PEFT = ArtifactFormat(
    kind="peft",
    library="peft",
    about="a peft adapter, saved apart from the base model",
    usage="`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), this_dir)`. An adapter "
    "trained on a quantised base (qlora, lora --base-bits 8) applies to the unquantised base too.",
    write=_write_peft,
    load=_load_peft,
    group_of=peft_type,
    put_on=_PeftOnBase,
    continue_from=_continue_peft,
)


# ---------------------------------------------------------------- freeze


def _write_freeze(model: Any, out: Path, tokenizer: Any, card: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    if not weights:
        raise TypeError(
            "the model has no trainable parameters to save: was it prepared with --method freeze?"
        )
    save_file(weights, out / FREEZE_WEIGHTS)
    manifest = {
        "method": card.get("method", "freeze"),
        "parameters": sorted(weights),
        "dtype": str(next(iter(weights.values())).dtype).removeprefix("torch."),
        "model_type": getattr(model.config, "model_type", None),
        "architectures": getattr(model.config, "architectures", None),
        "num_hidden_layers": getattr(model.config, "num_hidden_layers", None),
        "base_model": card.get("base_model"),
    }
    (out / FREEZE_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))


def _manifest(artifact: Path) -> dict[str, Any]:
    path = artifact / FREEZE_MANIFEST
    if not path.is_file():
        raise InvalidInput(f"{artifact} holds no freeze artifact ({FREEZE_MANIFEST} is missing)")
    return json.loads(path.read_text())


def apply_freeze(model: Any, artifact: Path) -> None:
    """Overwrite the base's tensors with the artifact's, after checking names, shapes and model type."""
    import torch
    from safetensors.torch import load_file

    manifest = _manifest(artifact)
    model_type = getattr(model.config, "model_type", None)
    if manifest.get("model_type") not in (None, model_type):
        raise InvalidInput(
            f"{artifact} was trained on a {manifest['model_type']} model, not this {model_type} base model"
        )
    weights = load_file(artifact / FREEZE_WEIGHTS)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise InvalidInput(
            f"{artifact} has tensors this base model lacks ({', '.join(unknown[:3])}): wrong base?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            if params[name].shape != tensor.shape:
                raise InvalidInput(
                    f"{artifact}: {name} is {tuple(tensor.shape)}, the base has {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor.to(params[name].dtype))


def _load_freeze(base_model_dir: Path, artifact: Path, *, load_base: Callable[[Path], Any]) -> Any:
    _manifest(artifact)
    model = load_base(base_model_dir)
    apply_freeze(model, artifact)
    return model


class _FreezeOnBase(OnBase):
    """Swaps one artifact's tensors in for the duration of `use`, and the originals back after."""

    def __init__(self, base: Any, artifacts: dict[str, Path]):
        self.base, self.artifacts = base, artifacts

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        import torch

        params = dict(self.base.named_parameters())
        names = [n for n in _manifest(self.artifacts[key])["parameters"] if n in params]
        originals = {n: params[n].detach().clone() for n in names}
        try:
            apply_freeze(self.base, self.artifacts[key])  # validates names and shapes, then copies
            yield self.base
        finally:
            with torch.no_grad():
                for name, tensor in originals.items():
                    params[name].copy_(tensor)

    @contextmanager
    def plain(self) -> Iterator[Any]:
        yield self.base

    def close(self) -> Any:
        return self.base


def _continue_freeze(model: Any, parent: Path) -> None:
    """The parent's trained blocks into the model; it must train exactly the tensors the parent did."""
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    saved = sorted(_manifest(parent)["parameters"])
    if trained != saved:
        extra = sorted(set(trained) ^ set(saved))
        raise InvalidInput(
            f"{parent}: the parent trained other tensors than this model does ({extra[0]}): "
            "continue it with the parent's --layers / --modules"
        )
    apply_freeze(model, parent)


FREEZE = ArtifactFormat(
    kind="freeze",
    library="transformers",
    about="the trained transformer blocks' tensors, saved apart from the base model",
    usage="load the base model, then overwrite the tensors listed in "
    f"`{FREEZE_MANIFEST}` with those of `{FREEZE_WEIGHTS}` (`ft submit eval` does this).",
    write=_write_freeze,
    load=_load_freeze,
    put_on=_FreezeOnBase,
    continue_from=_continue_freeze,
)


# ---------------------------------------------------------------- full


def _write_full(
    model: Any, out: Path, tokenizer: Any, card: dict[str, Any], state_dict: dict[str, Any] | None = None
) -> None:
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def _load_full(base_model_dir: Path, artifact: Path, *, load_base: Callable[[Path], Any]) -> Any:
    return load_base(artifact)


FULL = ArtifactFormat(
    kind="full",
    library="transformers",
    about="a complete model",
    usage="`AutoModelForCausalLM.from_pretrained(this_dir)`.",
    write=_write_full,
    load=_load_full,
    shares_base=False,
)

FORMATS = {f.kind: f for f in (PEFT, FREEZE, FULL)}
