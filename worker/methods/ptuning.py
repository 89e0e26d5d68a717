"""`--method ptuning`: P-Tuning, a trainable prompt encoder (MLP or LSTM) producing virtual tokens that
are prepended to the input embeddings (peft `PromptEncoder`); the whole base model stays frozen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from catalog.errors import InvalidInput
from worker.methods import in_compute_dtype, register_method

ENCODERS = {"mlp": "MLP", "lstm": "LSTM"}
"""--encoder values -> peft's PromptEncoderReparameterizationType values."""


@dataclass
class PTuningConfig:
    """Flags of `--method ptuning`."""

    virtual_tokens: int = 64
    """Number of virtual prompt tokens prepended to every input (--virtual-tokens)."""
    encoder_hidden: int = 128
    """Hidden size of the prompt encoder (--encoder-hidden)."""
    encoder: str = "mlp"
    """Prompt encoder kind: mlp or lstm (--encoder)."""

    def __post_init__(self) -> None:
        if self.virtual_tokens <= 0:
            raise InvalidInput(f"--virtual-tokens must be > 0 (got {self.virtual_tokens})")
        if self.encoder_hidden <= 0:
            raise InvalidInput(f"--encoder-hidden must be > 0 (got {self.encoder_hidden})")
        if self.encoder not in ENCODERS:
            raise InvalidInput(f"--encoder must be one of {', '.join(ENCODERS)} (got {self.encoder!r})")


@register_method(
    "ptuning",
    config=PTuningConfig,
    load_kwargs=in_compute_dtype,
    default_lr=3e-2,
    artifact="peft",
    default_epochs=8,
)
def prepare(model: nn.Module, cfg: PTuningConfig) -> nn.Module:
    """Wrap the base in a peft model with a prompt encoder on the input embeddings."""
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType, get_peft_model

    peft_cfg = PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.virtual_tokens,
        encoder_hidden_size=cfg.encoder_hidden,
        encoder_reparameterization_type=PromptEncoderReparameterizationType(ENCODERS[cfg.encoder]),
    )
    return get_peft_model(model, peft_cfg)
