"""`--method qlora`: QLoRA. The frozen base is loaded in 4-bit NF4 with double quantisation and bf16
compute (bitsandbytes, CUDA only), LoRA adapters go on all linear layers, and the optimizer defaults to
bitsandbytes' paged 8-bit AdamW, as in the QLoRA paper and the ChatGLM ADGEN write-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worker.methods import register_method, require_cuda
from worker.methods.lora import ALL_LINEAR, check_lora_flags, peft_lora_config, wrap


@dataclass
class QLoraConfig:
    """Flags of `--method qlora`."""

    rank: int = 16
    """Rank r of the low-rank update (--rank)."""
    alpha: float = 32.0
    """Scale numerator: the update is scaled by alpha / rank (--alpha)."""
    dropout: float = 0.05
    """Dropout on the adapter's input (--dropout)."""
    target: str = ALL_LINEAR
    """Modules to adapt: "all-linear" or a comma-separated list of module names (--target)."""
    dora: bool = False
    """DoRA adapters on the 4-bit base (--dora)."""

    def __post_init__(self) -> None:
        check_lora_flags(self.rank, self.alpha, self.dropout, self.target)


def load_kwargs(cfg: QLoraConfig, device: torch.device | str) -> dict[str, Any]:
    """4-bit NF4 with double quantisation and bf16 compute; refuses a machine without CUDA."""
    require_cuda(device, "--method qlora", "use --method lora on CPU")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"dtype": torch.bfloat16, "quantization_config": quant}


@register_method(
    "qlora",
    config=QLoraConfig,
    load_kwargs=load_kwargs,
    default_lr=2e-4,
    artifact="peft",
    optimizer="paged_adamw_8bit",
)
def prepare(model: nn.Module, cfg: QLoraConfig) -> nn.Module:
    """Prepare the 4-bit base for training and wrap it in a peft LoRA model."""
    return wrap(
        model, peft_lora_config(cfg.rank, cfg.alpha, cfg.dropout, cfg.target, cfg.dora), quantized=True
    )
