"""`--method freeze`: train only the last N transformer blocks (and the final norm), or the parameters
matching glob patterns; everything else stays frozen.

The blocks are found generically, as the largest homogeneous `nn.ModuleList` of the model
(`model.layers` for Llama/Qwen2/Mistral/SmolLM, `transformer.encoder.layers` for GLM, `transformer.h`
for GPT-2), so any `AutoModelForCausalLM` works. The trained tensors are saved apart from the base
(see worker.adapter_io).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog.errors import InvalidInput
from worker.methods import in_compute_dtype, register_method, upcast_trainable
from worker.methods.artifacts import FREEZE

if TYPE_CHECKING:
    from torch import nn

DEFAULT_SHARE = 0.53
"""The share of blocks trained by default: 16 of SmolLM2's 30. Chosen on the validation split: the last
16 blocks scored F1 0.245 there against 0.239 for the last 15 (half), at seed 42 on an H200
(bench/results/quality-faults-seed42-partial-dd78d18-NVIDIA_H200.json, `selection`)."""


@dataclass
class FreezeConfig:
    """Flags of `--method freeze`."""

    layers: int | None = None
    """Train the last N transformer blocks (--layers). Default: the last 53% of the blocks, rounded
    to the nearest (16 of SmolLM2's 30; at least 1), unless --modules alone selects what to train."""
    modules: tuple[str, ...] = ()
    """Glob patterns over parameter names to train as well (--modules), e.g. "*.mlp.*" or
    "model.embed_tokens.weight"; a comma-separated string is accepted."""
    train_norm: bool = True
    """Also train the final norm after the blocks when training the last blocks (--train-norm)."""

    def __post_init__(self) -> None:
        if self.layers is not None and (isinstance(self.layers, bool) or not isinstance(self.layers, int)):
            raise InvalidInput(f"--layers must be a whole number, not {self.layers!r}")
        if self.layers is not None and self.layers <= 0:
            raise InvalidInput(f"--layers must be > 0 (got {self.layers})")
        if isinstance(self.modules, str):
            self.modules = tuple(p.strip() for p in self.modules.split(",") if p.strip())
        self.modules = tuple(self.modules)
        if any(not isinstance(p, str) or not p.strip() for p in self.modules):
            raise InvalidInput("--modules patterns must be non-empty strings")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, list) of the model's transformer blocks: the largest `nn.ModuleList` whose
    entries share one class, by parameter count."""
    from torch import nn

    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise InvalidInput(f"cannot find the transformer blocks of {type(model).__name__}: use --modules")
    return best[1], best[2]


def default_layers(n_blocks: int) -> int:
    """The default number of trained blocks: the last DEFAULT_SHARE of them, at least one."""
    return max(1, round(n_blocks * DEFAULT_SHARE))


def final_norms(model: nn.Module, blocks_name: str) -> list[nn.Module]:
    """The norm modules next to the block list (Llama's `model.norm`, GLM's `final_layernorm`)."""
    parent = model.get_submodule(blocks_name.rpartition(".")[0]) if "." in blocks_name else model
    return [m for n, m in parent.named_children() if "norm" in type(m).__name__.lower() or "norm" in n]


@register_method(
    "freeze",
    config=FreezeConfig,
    load_kwargs=in_compute_dtype,
    default_lr=1e-4,
    artifact=FREEZE,
    default_epochs=8,
)
def prepare(model: nn.Module, cfg: FreezeConfig) -> nn.Module:
    """Freeze everything, then unfreeze the selected blocks, the final norm and matching parameters."""
    blocks_name, blocks = find_blocks(model)
    layers = cfg.layers
    if layers is None and not cfg.modules:
        layers = default_layers(len(blocks))
    if layers is not None and layers > len(blocks):
        raise InvalidInput(f"--layers {layers} exceeds the {len(blocks)} transformer blocks of this model")
    model.requires_grad_(False)
    if layers:
        for block in blocks[len(blocks) - layers :]:
            block.requires_grad_(True)
        if cfg.train_norm:
            for norm in final_norms(model, blocks_name):
                norm.requires_grad_(True)
    names = [n for n, _ in model.named_parameters()]
    for pattern in cfg.modules:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise InvalidInput(
                f"--modules pattern {pattern!r} matches no parameter; names look like {', '.join(names[:3])}"
            )
        for n in matched:
            model.get_parameter(n).requires_grad_(True)
    return upcast_trainable(model)
