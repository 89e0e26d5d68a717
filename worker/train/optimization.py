"""Optimizer, learning-rate schedule and seeding of a training run.

AdamW over the trainable parameters (fused on CUDA), with no weight decay on biases and norms, or
bitsandbytes' 8-bit / paged 8-bit AdamW (`--optimizer`, the qlora default; on a CUDA GPU, or on the CPU
with bitsandbytes >= 0.48, where the paged one is plain 8-bit AdamW: paging moves optimizer state
between GPU and host memory, and on the CPU it is in host memory already); a linear warm-up followed by
cosine or linear decay to zero, or a constant rate (`--scheduler`).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from catalog.errors import InvalidInput
from worker.models.loading import quantisation_problem
from worker.train.config import TrainConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes' 8-bit/paged variant) over the trainable parameters; no weight decay on
    biases and norms."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise InvalidInput("the prepared model has no trainable parameter: check the method's flags")
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, cfg.weight_decay), (rest, 0.0)) if ps]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")
    reason = quantisation_problem(device)
    if reason:
        raise InvalidInput(
            f"--optimizer {cfg.optimizer} needs bitsandbytes, which cannot run on {device} here: {reason}. "
            "Or use --optimizer adamw"
        )
    import bitsandbytes as bnb

    if cfg.optimizer == "paged_adamw_8bit" and device.type == "cuda":
        return bnb.optim.PagedAdamW8bit(groups, lr=cfg.lr)
    if cfg.optimizer == "paged_adamw_8bit":
        log.info("--optimizer paged_adamw_8bit on %s: using AdamW8bit (paging is for GPU memory)", device)
    return bnb.optim.AdamW8bit(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up, then cosine / linear decay to zero, or constant."""
    warmup = cfg.warmup_for(total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
