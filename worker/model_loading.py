"""Load a base model directory (any `AutoModelForCausalLM`) onto a device, in a given dtype or
quantised, and its tokenizer; count parameters.

The keyword arguments usually come from the method (`get_method(name).load_kwargs(cfg, device)`):
`dtype`, and `quantization_config` (a transformers `BitsAndBytesConfig`) for qlora / lora --base-bits 8.
`trust_remote_code` stays off unless the base model was registered with it (and a pinned revision).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catalog.errors import InvalidInput


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a (prepared) model; 4-bit weights count as the parameters they encode."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        """Trainable share in percent."""
        return 100.0 * self.trainable / self.total if self.total else 0.0


def default_device() -> torch.device:
    """This process's GPU (LOCAL_RANK under a multi-GPU launcher) if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _check_dir(model_dir: Path | str) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InvalidInput(f"{path} is not a model directory (no config.json): register the base model again")
    return path


def load_tokenizer(model_dir: Path | str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with the model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_check_dir(model_dir), trust_remote_code=trust_remote_code)


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with: the pad token, else the end-of-text token."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise InvalidInput(
        "the tokenizer has neither a pad nor an eos token: add one to the base model's tokenizer"
    )


def load_base(
    model_dir: Path | str,
    device: torch.device | str = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> nn.Module:
    """Load the causal LM in `model_dir` onto `device` (quantised when `quantization_config` is given)."""
    from transformers import AutoModelForCausalLM

    path = _check_dir(model_dir)
    device = torch.device(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        if device.type != "cuda":
            raise InvalidInput("a quantised base model needs a CUDA GPU")
        kwargs["quantization_config"] = quantization_config
    if device.type == "cuda":
        # Loads straight onto the GPU; quantisation also requires an explicit device map.
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise InvalidInput(
            f"the base model in {path} does not fit in GPU memory: use --method qlora or lora --base-bits 8"
        ) from exc
    if device.type != "cuda":
        model.to(device)
    return model


def count_parameters(model: nn.Module) -> ParamCounts:
    """Trainable and total parameters (shared tensors counted once)."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if hasattr(param, "quant_state") and hasattr(param, "quant_storage"):  # bitsandbytes Params4bit
            n = n * 2 * param.quant_storage.itemsize
        total += n
        if param.requires_grad:
            trainable += n
    return ParamCounts(trainable=trainable, total=total)
