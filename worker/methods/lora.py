"""`--method lora`: LoRA adapters on the base's linear layers (all of them by default); `--dora` makes
them DoRA (weight-decomposed), `--base-bits 8` loads the frozen base in int8 (bitsandbytes: a CUDA GPU,
or the CPU with bitsandbytes >= 0.48), as the ChatGLM write-up's LoRA run did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catalog.errors import InvalidInput
from worker.methods import compute_dtype, register_method, require_quantisation
from worker.methods.artifacts import PEFT
from worker.models.int8_matmul import WEIGHT_ONLY, check_choice

if TYPE_CHECKING:
    import torch
    from torch import nn

ALL_LINEAR = "all-linear"


@dataclass
class LoraMethodConfig:
    """Flags of `--method lora`."""

    rank: int = 32
    """Rank r of the low-rank update (--rank)."""
    alpha: float = 64.0
    """Scale numerator: the update is scaled by alpha / rank (--alpha)."""
    dropout: float = 0.05
    """Dropout on the adapter's input (--dropout)."""
    target: str = ALL_LINEAR
    """Modules to adapt: "all-linear" (every linear layer but the output head) or a comma-separated
    list of module names such as "q_proj,v_proj" (--target)."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA) instead of plain LoRA (--dora)."""
    base_bits: int | None = None
    """Load the frozen base in 8-bit (--base-bits 8; needs bitsandbytes); None keeps it in bf16/fp32."""
    int8_matmul: str = WEIGHT_ONLY
    """How an int8 base multiplies (--int8-matmul): "weight-only" dequantises the int8 weights inside
    each matmul (no host synchronisation); "llm-int8" is bitsandbytes' LLM.int8() (int8 activations, fp16
    outlier columns, two synchronisations per layer: many times slower)."""

    def __post_init__(self) -> None:
        check_lora_flags(self.rank, self.alpha, self.dropout, self.target)
        if self.base_bits not in (None, 8):
            raise InvalidInput(
                f"--base-bits must be 8 (or omitted; use --method qlora for 4-bit), not {self.base_bits!r}"
            )
        check_choice(self.int8_matmul)
        if self.int8_matmul != WEIGHT_ONLY and self.base_bits != 8:
            raise InvalidInput("--int8-matmul applies to an int8 base: add --base-bits 8, or drop it")


def check_lora_flags(rank: int, alpha: float, dropout: float, target: str) -> None:
    """The validation shared by lora and qlora."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise InvalidInput(f"--rank must be a whole number > 0 (got {rank!r})")
    if alpha <= 0:
        raise InvalidInput(f"--alpha must be > 0 (got {alpha})")
    if not 0 <= dropout < 1:
        raise InvalidInput(f"--dropout must be in [0, 1) (got {dropout})")
    if not isinstance(target, str) or not target_modules(target):
        raise InvalidInput(f'--target must be "{ALL_LINEAR}" or a comma-separated list of module names')


def target_modules(target: str) -> str | list[str]:
    """peft's `target_modules` for a --target value."""
    if target.strip() == ALL_LINEAR:
        return ALL_LINEAR
    return [name.strip() for name in target.split(",") if name.strip()]


def peft_lora_config(rank: int, alpha: float, dropout: float, target: str, dora: bool) -> Any:
    """The peft LoraConfig of a causal LM."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules(target),
        use_dora=dora,
        bias="none",
    )


def wrap(model: nn.Module, peft_cfg: Any, quantized: bool) -> nn.Module:
    """Add the adapters; a quantised base first gets peft's k-bit preparation (norms in fp32, inputs
    requiring grad). Gradient checkpointing is left to the trainer (--gradient-checkpointing)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:  # e.g. a --target naming no module of this architecture
        raise InvalidInput(f"cannot add LoRA adapters (--target {peft_cfg.target_modules!r}): {exc}") from exc


def load_kwargs(cfg: LoraMethodConfig, device: torch.device | str) -> dict[str, Any]:
    """The frozen base in bf16/fp32, or in int8 with --base-bits 8 (bitsandbytes; int8 weights, the rest
    and the computation in bf16 on a bf16 GPU, fp32 on the CPU; weight-only unless --int8-matmul says
    llm-int8)."""
    if cfg.base_bits != 8:
        return {"dtype": compute_dtype(device)}
    require_quantisation(device, "--base-bits 8", "omit --base-bits to train LoRA on a bf16/fp32 base")
    from transformers import BitsAndBytesConfig

    return {
        "dtype": compute_dtype(device),
        "quantization_config": BitsAndBytesConfig(load_in_8bit=True),
        "int8_matmul": cfg.int8_matmul,
    }


@register_method(
    "lora",
    config=LoraMethodConfig,
    load_kwargs=load_kwargs,
    default_lr=2e-3,
    artifact=PEFT,
    keeps_on_continue=("dropout", "base_bits", "int8_matmul"),
    default_epochs=4,
)
def prepare(model: nn.Module, cfg: LoraMethodConfig) -> nn.Module:
    """Wrap the base in a peft LoRA (or DoRA) model; adapter weights are kept in fp32."""
    peft_cfg = peft_lora_config(cfg.rank, cfg.alpha, cfg.dropout, cfg.target, cfg.dora)
    return wrap(model, peft_cfg, quantized=cfg.base_bits is not None)
