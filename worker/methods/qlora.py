"""`--method qlora`: QLoRA. The frozen base is loaded in 4-bit NF4 with double quantisation (bitsandbytes),
LoRA adapters go on all linear layers, and the optimizer defaults to bitsandbytes' paged 8-bit AdamW, as
in the QLoRA paper and the ChatGLM ADGEN write-up.

On a CUDA GPU the base is bf16. On the CPU (bitsandbytes >= 0.48) its unquantised parts (embeddings,
norms, head) are fp32, as everything is in the trainer's CPU mode, and so the adapter reloads exactly;
the 4-bit layers dequantise and multiply in bf16 where the CPU does bf16 natively (AVX512-BF16 or AMX:
~1.4x faster than fp32 on a 10M-parameter Llama), in fp32 elsewhere. The paged optimizer becomes plain
8-bit AdamW there (worker.optimization)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.methods import register_method, require_quantisation
from worker.methods.artifacts import PEFT
from worker.methods.lora import ALL_LINEAR, check_lora_flags, peft_lora_config, wrap

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class QLoraConfig:
    """Flags of `--method qlora`."""

    rank: int = 32
    """Rank r of the low-rank update (--rank)."""
    alpha: float = 64.0
    """Scale numerator: the update is scaled by alpha / rank (--alpha)."""
    dropout: float = 0.05
    """Dropout on the adapter's input (--dropout)."""
    target: str = ALL_LINEAR
    """Modules to adapt: "all-linear" or a comma-separated list of module names (--target)."""
    dora: bool = False
    """DoRA adapters on the 4-bit base (--dora)."""

    def __post_init__(self) -> None:
        check_lora_flags(self.rank, self.alpha, self.dropout, self.target)


def cpu_has_native_bf16() -> bool:
    """True if this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    import torch

    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # private helpers: a torch without them gets the safe answer
        return False


def load_kwargs(cfg: QLoraConfig, device: torch.device | str) -> dict[str, Any]:
    """4-bit NF4 with double quantisation, bf16 on CUDA, fp32 with bf16 or fp32 4-bit compute on the
    CPU; refuses a device where bitsandbytes cannot quantise."""
    require_quantisation(device, "--method qlora", "use --method lora on an unquantised base")
    import torch
    from transformers import BitsAndBytesConfig

    if torch.device(device).type == "cuda":
        dtype = compute = torch.bfloat16
    else:
        dtype, compute = torch.float32, torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    return {"dtype": dtype, "quantization_config": quant}


@register_method(
    "qlora",
    config=QLoraConfig,
    load_kwargs=load_kwargs,
    default_lr=1e-3,
    default_epochs=4,
    artifact=PEFT,
    keeps_on_continue=("dropout",),
    optimizer="paged_adamw_8bit",
)
def prepare(model: nn.Module, cfg: QLoraConfig) -> nn.Module:
    """Prepare the 4-bit base for training and wrap it in a peft LoRA model."""
    return wrap(
        model, peft_lora_config(cfg.rank, cfg.alpha, cfg.dropout, cfg.target, cfg.dora), quantized=True
    )
