"""`--method ptuning-v2`: P-Tuning v2, trainable prefixes on every layer's keys and values (peft prefix
tuning), reparameterised through an MLP (`--prefix-projection`, as in the P-Tuning v2 paper) by default.
ChatGLM's own recipe trains the prefixes directly (`--no-prefix-projection`, 128 tokens, lr 2e-2), but on
SmolLM2-135M that reached only 0.06 triple F1 against 0.21 with the projection (64 tokens, lr 2e-3,
8 epochs): bench/results/quality-faults-sweep-*.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog.errors import InvalidInput
from worker.methods import PROMPT_LEARNING_CONTINUES, in_compute_dtype, register_method
from worker.methods.artifacts import PEFT

if TYPE_CHECKING:
    from torch import nn


@dataclass
class PTuningV2Config:
    """Flags of `--method ptuning-v2`."""

    virtual_tokens: int = 64
    """Prefix length: virtual key/value positions added to every layer (--virtual-tokens)."""
    prefix_projection: bool = True
    """Produce the prefixes through a two-layer MLP rather than train them directly (--prefix-projection)."""
    projection_hidden: int = 512
    """Hidden size of that MLP (--projection-hidden); used only with --prefix-projection."""

    def __post_init__(self) -> None:
        if self.virtual_tokens <= 0:
            raise InvalidInput(f"--virtual-tokens must be > 0 (got {self.virtual_tokens})")
        if self.projection_hidden <= 0:
            raise InvalidInput(f"--projection-hidden must be > 0 (got {self.projection_hidden})")


@register_method(
    "ptuning-v2",
    config=PTuningV2Config,
    load_kwargs=in_compute_dtype,
    default_lr=2e-3,
    artifact=PEFT,
    continues=PROMPT_LEARNING_CONTINUES,
    default_epochs=8,
)
def prepare(model: nn.Module, cfg: PTuningV2Config) -> nn.Module:
    """Wrap the base in a peft prefix-tuning model."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    peft_cfg = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.virtual_tokens,
        prefix_projection=cfg.prefix_projection,
        encoder_hidden_size=cfg.projection_hidden,
    )
    return get_peft_model(model, peft_cfg)
