"""Training methods, registered by name (`--method`): what each one trains and how its base is loaded.

A new method is ONE new module here (plus its test), imported at the bottom of this file. It provides:

1. a config dataclass: one field per flag, a docstring under each field (it becomes the flag's
   `--help`), defaults that are the method's best measured setting, and a `__post_init__` that
   raises `InvalidInput` naming the flag (`--rank must be ...`). `ft submit train` derives its flags
   from these fields (cli/flags.py), so a field and its flag cannot drift apart;
2. `prepare(model, cfg) -> model`: turns the loaded base into the trainable model (freezes what is not
   trained, wraps it in peft, ...), decorated with `@register_method(name, ...)`, which records
   - `config`: the dataclass above;
   - `load_kwargs(cfg, device) -> dict`: how the base is loaded for it (`dtype`, a
     `quantization_config`); `in_compute_dtype` for the common case;
   - `default_lr`, `default_epochs`, `optimizer`: its training defaults (`ft methods list`);
   - `continues` (None, or why `--from ADAPTER` cannot continue it) and `keeps_on_continue` (the
     flags a continued adapter may change from its parent's);
   - `artifact`: what it saves and how that is used again: `PEFT`, `FREEZE` or `FULL` from
     worker/methods/artifacts.py, or a new `ArtifactFormat` there;
3. nothing else: the shared trainer, the jobs, evaluation and the CLI take it from the registry.

Importing this package (and so listing methods for `--help`) imports no torch: modules import torch and
peft inside their functions.

    method = get_method("lora")
    cfg = method.make_config({"rank": 16})          # InvalidInput naming the flag on a bad value
    model = load_base(model_dir, device, **method.load_kwargs(cfg, device))
    model = method.prepare(model, cfg)

Quantised bases (qlora, lora --base-bits 8) need bitsandbytes on a CUDA GPU, or bitsandbytes >= 0.48 on
the CPU. That is checked by `load_kwargs` for the device the job actually runs on, not in the config's
`__post_init__`: a spec is validated at submit time on a machine that may lack what the worker has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catalog.errors import InvalidInput
from worker.methods.artifacts import ArtifactFormat

if TYPE_CHECKING:
    import torch
    from torch import nn

Prepare = Callable[["nn.Module", Any], "nn.Module"]
LoadKwargs = Callable[[Any, "torch.device | str"], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """One registered training method."""

    name: str
    config: type
    """The method's config dataclass (its fields are the method's flags)."""
    prepare: Prepare
    load_kwargs: LoadKwargs
    """`load_kwargs(cfg, device)`: keyword arguments for `from_pretrained` (dtype, quantization_config)."""
    default_lr: float
    artifact: ArtifactFormat
    """What the trained result is saved as, and how it is loaded and applied again."""
    optimizer: str = "adamw"
    """Default optimizer (TrainConfig.optimizer overrides it)."""
    default_epochs: int = 3
    """Default passes over the data (TrainConfig.epochs overrides it)."""
    continues: str | None = None
    """None when `--from ADAPTER` can continue this method's training; else why it cannot."""
    keeps_on_continue: tuple[str, ...] = ()
    """Config fields a continued adapter may change from its parent's (they leave the trained tensors'
    names and shapes alone, e.g. dropout); every other field is the parent's."""

    def make_config(self, flags: dict[str, Any] | None = None) -> Any:
        """Build the method's config from a flags dict; unknown keys are refused with the flags it has."""
        return config_from_dict(self.config, flags or {}, what=f"--method {self.name}")


METHODS: dict[str, Method] = {}

PROMPT_LEARNING_CONTINUES = (
    "peft saves a prompt-learning adapter's output embeddings, not its prompt encoder, so its training "
    "cannot be continued: train a new adapter"
)


def register_method(
    name: str,
    *,
    config: type,
    load_kwargs: LoadKwargs,
    default_lr: float,
    artifact: ArtifactFormat,
    optimizer: str = "adamw",
    default_epochs: int = 3,
    continues: str | None = None,
    keeps_on_continue: tuple[str, ...] = (),
) -> Callable[[Prepare], Prepare]:
    """Decorator registering `prepare` under `name`; refuses a name that is already taken."""
    if not isinstance(artifact, ArtifactFormat):
        raise TypeError(f"artifact of method {name!r} must be an ArtifactFormat, not {artifact!r}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of method {name!r} must be a dataclass")

    def decorator(prepare: Prepare) -> Prepare:
        if name in METHODS:
            raise ValueError(f"training method {name!r} is already registered")
        METHODS[name] = Method(
            name, config, prepare, load_kwargs, default_lr, artifact, optimizer, default_epochs,
            continues, keeps_on_continue,
        )  # fmt: skip
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


# ---------------------------------------------------------------- helpers the methods share


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a CUDA GPU that supports it, fp32 otherwise (CPU, or GPUs without bf16)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def in_compute_dtype(cfg: Any, device: torch.device | str) -> dict[str, Any]:
    """`load_kwargs` of methods that keep the base frozen in the compute dtype (bf16 on a GPU, fp32 on a
    CPU): freeze (which upcasts its trained blocks in `prepare`), ptuning and ptuning-v2."""
    return {"dtype": compute_dtype(device)}


def require_quantisation(device: torch.device | str, what: str, instead: str) -> None:
    """InvalidInput unless bitsandbytes can quantise on `device`: a CUDA GPU with bitsandbytes installed,
    or the CPU with bitsandbytes >= 0.48."""
    import torch

    from worker.models.loading import quantisation_problem

    device = torch.device(device)
    reason = quantisation_problem(device)
    if reason:
        raise InvalidInput(
            f"{what} needs bitsandbytes quantisation, which cannot run on {device} here: {reason}. "
            f"Or {instead}"
        )


def upcast_trainable(model: nn.Module) -> nn.Module:
    """Keep trained parameters in fp32 (the optimizer's updates are lost in bf16); frozen ones stay."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


# Importing the method modules registers them.
from worker.methods import freeze, full, lora, ptuning, ptuning_v2, qlora  # noqa: E402, F401
