"""Load a base model directory (any `AutoModelForCausalLM`) onto a device, in a given dtype or
quantised, and its tokenizer (with a pad token); count parameters of a loaded model; say whether
bitsandbytes can quantise on a device.

The keyword arguments usually come from the method (`get_method(name).load_kwargs(cfg, device)`):
`dtype`, and `quantization_config` (a transformers `BitsAndBytesConfig`) for qlora / lora --base-bits 8.
`trust_remote_code` stays off unless the base model was registered with it (and a pinned revision).

Quantised bases (4-bit NF4, int8) and 8-bit optimizers run on a CUDA GPU with bitsandbytes installed, or
on the CPU with bitsandbytes >= 0.48, whose CPU backend quantises, trains through the quantised layers
and steps 8-bit optimizers; `quantisation_problem(device)` says why not when they cannot.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catalog.errors import InvalidInput
from worker.models.int8_matmul import WEIGHT_ONLY, use_weight_only


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


def load_tokenizer(
    model_dir: Path | str, *, trust_remote_code: bool = False, padding_side: str = "right"
) -> Any:
    """The tokenizer saved with the model, with a pad token (`ensure_pad_token`)."""
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    tokenizer = AutoTokenizer.from_pretrained(_check_dir(model_dir), trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def fallback_pad_token(tokenizer: Any) -> str:
    """The token batches are padded with: the pad token, else the end-of-text token."""
    token = tokenizer.pad_token or tokenizer.eos_token
    if token is None:
        raise InvalidInput(
            "the tokenizer has neither a pad nor an eos token: add one to the base model's tokenizer"
        )
    return token


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token its end-of-text token as one; returns the tokenizer."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = fallback_pad_token(tokenizer)
    return tokenizer


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with: the pad token's, else the end-of-text token's."""
    value = tokenizer.pad_token_id if tokenizer.pad_token is not None else None
    if value is None:
        value = tokenizer.convert_tokens_to_ids(fallback_pad_token(tokenizer))
    return int(value[0] if isinstance(value, list) else value)


BNB_CPU_MIN_VERSION = "0.48"
"""The first bitsandbytes release whose CPU backend covers 4-bit / int8 training and 8-bit optimizers."""


def quantisation_problem(device: torch.device | str) -> str | None:
    """Why bitsandbytes (quantised bases, 8-bit optimizers) cannot run on `device` here; None if it can."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "this machine has no CUDA GPU"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "the bitsandbytes package is not installed on the worker: pip install bitsandbytes"
        return None
    if device.type == "cpu":
        return bitsandbytes_cpu_problem()
    return f"bitsandbytes quantisation is not supported on {device.type} devices"


@functools.cache
def bitsandbytes_cpu_problem(min_version: str = BNB_CPU_MIN_VERSION) -> str | None:
    """None if the installed bitsandbytes quantises, trains and optimises on the CPU, else why not.
    Checked once per process: the version, then a tiny NF4 / int8 layer's forward and backward and an
    8-bit AdamW step, since a build can be too old or lack its CPU library."""
    install = f"pip install 'bitsandbytes>={min_version}'"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"the bitsandbytes package is not installed on the worker: {install}"
    try:
        import bitsandbytes as bnb
        from packaging.version import Version

        if Version(bnb.__version__) < Version(min_version):
            return f"bitsandbytes {bnb.__version__} cannot quantise on the CPU: {install}"
        with torch.random.fork_rng(devices=[]):  # leave the caller's seeded generator as it was
            x = torch.randn(2, 64)
            layers = [
                bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu"),
                bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to("cpu"),
            ]
            head = nn.Linear(64, 64)
            optimizer = bnb.optim.AdamW8bit(head.parameters(), lr=1e-3)
            for layer in layers:
                layer(head(x)).square().mean().backward()
            optimizer.step()
        if not all(torch.isfinite(p).all() for p in head.parameters()):
            raise RuntimeError("non-finite result")
    except Exception as exc:  # a broken or partial install: any failure means "not here"
        return f"bitsandbytes failed a test quantisation on this CPU ({type(exc).__name__}: {exc}): {install}"
    return None


class _FirstOccurrence(logging.Filter):
    """Lets each distinct message through once: bitsandbytes logs the cast of an int8 layer's input
    to fp16 on every forward outside training, i.e. hundreds of lines per evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _log_bitsandbytes_casts_once() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _FirstOccurrence) for f in logger.filters):
        logger.addFilter(_FirstOccurrence())


def load_base(
    model_dir: Path | str,
    device: torch.device | str = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    int8_matmul: str = "weight-only",
) -> nn.Module:
    """Load the causal LM in `model_dir` onto `device` (quantised when `quantization_config` is given).
    An int8 base multiplies as `int8_matmul` says (worker.models.int8_matmul: "weight-only" or
    "llm-int8")."""
    from transformers import AutoModelForCausalLM

    path = _check_dir(model_dir)
    device = torch.device(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        problem = quantisation_problem(device)
        if problem:
            raise InvalidInput(f"a quantised base model cannot be loaded on {device}: {problem}")
        kwargs["quantization_config"] = quantization_config
        _log_bitsandbytes_casts_once()
    if device.type == "cuda":
        # Loads straight onto the GPU; quantisation also requires an explicit device map.
        kwargs["device_map"] = {"": device.index or 0}
    elif quantization_config is not None:
        kwargs["device_map"] = {"": "cpu"}  # bitsandbytes quantises each weight as it is placed
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise InvalidInput(
            f"the base model in {path} does not fit in GPU memory: use --method qlora or lora --base-bits 8"
        ) from exc
    if "device_map" not in kwargs:  # a quantised model is where its device map put it and cannot move
        model.to(device)
    if getattr(quantization_config, "load_in_8bit", False) and int8_matmul == WEIGHT_ONLY:
        use_weight_only(model)
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
