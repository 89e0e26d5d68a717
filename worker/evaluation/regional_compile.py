"""Regional compilation for the graph decoding loop: `torch.compile` each decoder layer of a model.

A captured CUDA graph removes the host's launches but not the kernels: an eager decoder layer is ~40 of
them (RMSNorm alone is six elementwise kernels, rotary embeddings ten), and at a few microseconds each
they, not the weights, set a small model's step time. Inductor fuses each layer's elementwise work into
a handful of Triton kernels around the matrix products; the loop then captures the compiled layers in
its graph as it captures eager ones (worker/evaluation/graph_decoding.py).

The layers of a model share one code object, so PyTorch compiles one layer and reuses it for the others
("regional compilation", the PyTorch tutorial's recipe for cutting compile time); `dynamic=True` makes
one compile serve every batch size and cache length (prefill and the one-token step still compile
once each). What it costs is that compile, tens of seconds at the first batch of a process, so it pays
on long evaluations and not on a handful of rows.
"""

from __future__ import annotations

from typing import Any

import torch

COMPILED = "_ft_compiled_layers"
"""The attribute a compiled model carries (compiling twice would wrap the wrappers)."""


def decoder_layers(base: Any) -> torch.nn.ModuleList | None:
    """A transformers model's list of decoder layers (its largest ModuleList of identical blocks)."""
    best = None
    for _, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            kinds = {type(layer) for layer in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best)):
                best = module
    return best


def compile_layers(model: Any) -> str:
    """Compile `model`'s decoder layers in place (once per model); returns what was done, for the log."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, COMPILED, False):
        return "decoder layers already compiled"
    layers = decoder_layers(base)
    if layers is None:
        return "no decoder layers found to compile"
    for layer in layers:
        layer.compile(dynamic=True)
    setattr(base, COMPILED, True)
    return f"compiled {len(layers)} {type(layers[0]).__name__} layers (torch.compile, dynamic shapes)"
