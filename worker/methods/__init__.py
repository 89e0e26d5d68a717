"""Training methods, registered by name (`--method`): what each one trains and how its base is loaded.

One module per method (freeze, ptuning, ptuning_v2, lora, qlora, full), each a typed config dataclass
plus ONE function `prepare(model, cfg) -> model` that turns a loaded base model into the trainable one,
registered with `@register_method(name, ...)` in the way peft's `register_peft_method` registers its
tuners. The registry entry (`Method`) also says how the base must be loaded (`load_kwargs`), the
default learning rate, epochs and optimizer, and which artifact format the result is saved as. The
defaults are the best settings of the issue #4 sweep (see worker/train_config.py).

    spec = get_method("lora")
    cfg = spec.make_config({"rank": 16})          # InvalidInput naming the flag on a bad value
    model = load_base(model_dir, device, **spec.load_kwargs(cfg, device))
    model = spec.prepare(model, cfg)

Quantised bases (qlora, lora --base-bits 8) need bitsandbytes on a CUDA GPU, or bitsandbytes >= 0.48 on
the CPU. That is checked by `load_kwargs` for the device the job actually runs on, not in the config's
`__post_init__`: a spec is validated at submit time on a machine that may lack what the worker has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from catalog.errors import InvalidInput
from worker.model_loading import quantisation_problem

ARTIFACT_KINDS = ("peft", "freeze", "full")


@dataclass(frozen=True)
class Method:
    """One registered training method."""

    name: str
    config: type
    """The method's config dataclass (its fields are the method's flags)."""
    prepare: Callable[[nn.Module, Any], nn.Module]
    load_kwargs: Callable[[Any, torch.device | str], dict[str, Any]]
    """`load_kwargs(cfg, device)`: keyword arguments for `from_pretrained` (dtype, quantization_config)."""
    default_lr: float
    artifact: str
    """How the trained result is saved: "peft" (adapter), "freeze" (trained tensors) or "full" (model)."""
    optimizer: str = "adamw"
    """Default optimizer (TrainConfig.optimizer overrides it)."""
    default_epochs: int = 3
    """Default passes over the data (TrainConfig.epochs overrides it)."""

    def make_config(self, flags: dict[str, Any] | None = None) -> Any:
        """Build the method's config from a flags dict (e.g. the job spec's JSON)."""
        return config_from_dict(self.config, flags or {}, what=f"--method {self.name}")


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    config: type,
    load_kwargs: Callable[[Any, torch.device | str], dict[str, Any]],
    default_lr: float,
    artifact: str,
    optimizer: str = "adamw",
    default_epochs: int = 3,
) -> Callable[[Callable[[nn.Module, Any], nn.Module]], Callable[[nn.Module, Any], nn.Module]]:
    """Decorator registering `prepare` under `name`; refuses a name that is already taken."""
    if artifact not in ARTIFACT_KINDS:
        raise ValueError(f"artifact must be one of {ARTIFACT_KINDS}, not {artifact!r}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of method {name!r} must be a dataclass")

    def decorator(prepare: Callable[[nn.Module, Any], nn.Module]) -> Callable[[nn.Module, Any], nn.Module]:
        if name in METHODS:
            raise ValueError(f"training method {name!r} is already registered")
        METHODS[name] = Method(
            name, config, prepare, load_kwargs, default_lr, artifact, optimizer, default_epochs
        )
        return prepare

    return decorator


def get_method(name: str) -> Method:
    """The method registered as `name`; InvalidInput listing the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown training method {name!r} (--method): choose one of {', '.join(sorted(METHODS))}"
        ) from None


def config_from_dict(cls: type, data: dict[str, Any], *, what: str) -> Any:
    """`cls(**data)`, refusing unknown keys with the list of accepted flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        flags = ", ".join("--" + n.replace("_", "-") for n in sorted(names)) or "none"
        bad = ", ".join("--" + n.replace("_", "-") for n in unknown)
        raise InvalidInput(f"{what} does not accept {bad}; its flags are: {flags}")
    return cls(**data)


def in_compute_dtype(cfg: Any, device: torch.device | str) -> dict[str, Any]:
    """`load_kwargs` of methods that keep the base frozen in the compute dtype (bf16 on a GPU, fp32 on a
    CPU): freeze (which upcasts its trained blocks in `prepare`), ptuning and ptuning-v2."""
    return {"dtype": compute_dtype(device)}


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a CUDA GPU that supports it, fp32 otherwise (CPU, or GPUs without bf16)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def require_quantisation(device: torch.device | str, what: str, instead: str) -> None:
    """InvalidInput unless bitsandbytes can quantise on `device`: a CUDA GPU with bitsandbytes installed,
    or the CPU with bitsandbytes >= 0.48."""
    device = torch.device(device)
    reason = quantisation_problem(device)
    if reason:
        raise InvalidInput(
            f"{what} needs bitsandbytes quantisation, which cannot run on {device} here: {reason}. "
            f"Or {instead}"
        )


def upcast_trainable(model: nn.Module) -> nn.Module:
    """Keep trained parameters in fp32 (the optimizer's updates are lost in bf16); frozen ones stay."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


# Importing the method modules registers them.
from worker.methods import freeze, full, lora, ptuning, ptuning_v2, qlora  # noqa: E402, F401
