"""`--method full`: full fine-tuning, every parameter trained.

The weights are loaded in fp32 by default (with bf16 autocast on the GPU) so that AdamW's small updates
are not rounded away; `--precision bf16` halves the memory of weights, gradients and optimizer state at
that cost. Memory is about 16 bytes a parameter in fp32 (weights, gradients, two AdamW moments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catalog.errors import InvalidInput
from worker.methods import register_method
from worker.methods.artifacts import FULL

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("fp32", "bf16")


@dataclass
class FullConfig:
    """Flags of `--method full`."""

    precision: str = "fp32"
    """dtype of the trained weights and optimizer state: fp32 or bf16 (--precision)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")


def load_kwargs(cfg: FullConfig, device: torch.device | str) -> dict[str, Any]:
    """The base in the trained precision."""
    import torch

    if cfg.precision == "bf16" and torch.device(device).type == "cpu":
        raise InvalidInput("--precision bf16 is for GPUs; on CPU full fine-tuning runs in fp32")
    return {"dtype": torch.bfloat16 if cfg.precision == "bf16" else torch.float32}


@register_method(
    "full",
    config=FullConfig,
    load_kwargs=load_kwargs,
    default_lr=2e-4,
    artifact=FULL,
    keeps_on_continue=("precision",),
    default_epochs=4,
)
def prepare(model: nn.Module, cfg: FullConfig) -> nn.Module:
    """Every parameter trainable."""
    model.requires_grad_(True)
    return model
