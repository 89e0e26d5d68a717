"""FSDP for `--method full` on several GPUs: weights, gradients and optimizer state split over the ranks.

A full fine-tune holds ~16 bytes a parameter in fp32 (weights, gradients, two AdamW moments): a 7B
model needs ~112 GB, more than one GPU. With `--gpus N` (and `--fsdp`, the default) the recipe shards
the model with PyTorch's FSDP2 (`fully_shard`, one unit per decoder layer, then the root), so each rank
keeps 1/N of it and gathers a layer's weights only while it runs. The engine's data parallelism is
otherwise unchanged (worker/train/distributed.py): each rank runs its share of every step's
micro-batches, each loss weighted by its share of the step's target tokens, and the gradients are
SUMMED over the ranks (the reduce-scatter's divide factor is 1), so the update is the one-GPU update
of the same effective batch. What FSDP changes, and what this module gives the engine for it:

- every rank must run the same number of forward and backward passes (each one gathers weights
  collectively): a rank with fewer micro-batches in a step repeats one with loss weight 0
  (`even_share`);
- the eval loss runs on every rank (the same rows everywhere); scoring by generation
  (`--eval-metric`) is refused for sharded jobs;
- checkpoints and the artifact need the whole state: every rank takes part in gathering it
  (`full_state`), rank 0 writes it, in the same files as an unsharded run, the optimizer's state keyed
  by parameter name (`OPTIMIZER_FORMAT`), so a job may resume on another number of GPUs, sharded or
  not (`load_full_state`).

PyTorch's own FSDP2 and distributed-checkpoint state-dict functions do the work; this module decides
where the units are and keeps the engine's loop one loop (torchtune's distributed recipe does the
same with the same calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from catalog.errors import InvalidInput

T = TypeVar("T")

OPTIMIZER_FORMAT = "by-name"
"""state.json's `optimizer_format` for an optimizer state keyed by parameter name (a sharded run's)."""


def shard_model(model: nn.Module) -> nn.Module:
    """Shard `model` in place over the process group: one FSDP unit per decoder layer (the classes
    transformers names in `_no_split_modules`), then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise InvalidInput(
            f"{type(model).__name__} names no decoder layer class to shard (_no_split_modules): train it "
            "with --no-fsdp"
        )
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for unit in (m for m in model.modules() if isinstance(m, FSDPModule)):  # each unit reduces its own
        unit.set_gradient_divide_factor(1.0)  # sum over the ranks: the engine weights each loss itself
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def even_share(mine: Sequence[T], every: Sequence[T], most: int) -> list[tuple[T, bool]]:
    """This rank's micro-batches padded to `most` (the largest share of any rank) with repeats of the
    step's first micro-batch: (micro-batch, counts); a repeat's loss is weighted 0."""
    return [(m, True) for m in mine] + [(every[0], False)] * (most - len(mine))


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """(the trainable weights by name, the optimizer state by parameter name), whole and on the CPU.
    Collective: every rank calls it; rank 0's copies are the ones to write."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    names = [n for n, p in model.named_parameters() if p.requires_grad]  # tied weights once
    weights = {n: weights[n].contiguous() for n in names if n in weights}
    optim = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return weights, optim


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor], optim: dict
) -> None:
    """Put a whole state (`full_state`'s, read back from a checkpoint) into a sharded or plain model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=options)
