"""Fused training kernels: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, and the fused linear
cross-entropy that computes the loss chunk by chunk without materialising the logits) on the base
model, before a method wraps it. With a 49k-150k vocabulary the logits of a 16k-token micro-batch alone
are 3-10 GB in fp32; fused, they never exist. liger-kernel is what the field uses for this (TRL and
axolotl call the same entry point); it needs a CUDA GPU and is the `gpu` extra (`pip install ft[gpu]`).
`--no-fused-kernels` leaves the model as transformers built it (the bench measures both)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)


def fused_kernels_problem(model: Any) -> str | None:
    """Why Liger's kernels cannot be applied to `model` here, or None if they can."""
    device = next(model.parameters()).device
    return fused_kernels_problem_for(getattr(model.config, "model_type", None), device.type)


def fused_kernels_problem_for(model_type: str | None, device_type: str) -> str | None:
    """The same, from a model type and a device type alone (before the model is loaded)."""
    if device_type != "cuda":
        return f"they run on CUDA GPUs and the model is on {device_type}"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'ft[gpu]')"
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"Liger has no kernels for model type {model_type!r}"
    return None


def apply_fused_kernels(model: Any, *, loss: bool = True, device_type: str | None = None) -> str:
    """Patch `model` in place with Liger's kernels when possible; returns what was done, for the log.
    `loss=False` leaves the loss and the logits to transformers (decoding needs the logits);
    `device_type`: where the model will run, when it is loaded elsewhere first (FSDP loads on the CPU)."""
    if device_type is None:
        problem = fused_kernels_problem(model)
    else:
        problem = fused_kernels_problem_for(getattr(model.config, "model_type", None), device_type)
    if problem:
        return f"fused kernels not applied: {problem}"
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=loss,
    )
    kinds = "RMSNorm, RoPE, SwiGLU" + (", fused linear cross-entropy" if loss else "")
    return f"fused kernels applied to {model.config.model_type} (Liger: {kinds})"
