"""How an int8 base (lora --base-bits 8) multiplies: weight-only by default, LLM.int8() on request.

bitsandbytes' `Linear8bitLt` runs LLM.int8() on a CUDA GPU: it quantises every input to int8 in fp16 (a
bf16 model's activations are cast first) and splits off the outlier columns (|x| >= 6) into an fp16
matmul. Finding those columns costs `outliers.any()` and `torch.argwhere` per layer and call: two
host-device synchronisations in every linear layer's forward, so the CPU can never run ahead of the GPU,
and a LoRA run on SmolLM2-135M went at 1.9k tokens/s against 26k on the bf16 base (H200, 2026-12-02).

"weight-only" (W8A16) keeps the int8 weights and their memory, and computes each layer as
`linear(x, dequantised weight)` in the compute dtype: bitsandbytes' own `MatMul8bitFp`, the path it takes
for training on the CPU and XPU. It dequantises the weight again in the backward pass instead of keeping
it, so the activations' memory is that of a bf16 base, and it has no synchronisation. Numerically it is
closer to the bf16 base than LLM.int8(): only the weights are rounded, never the activations. Nothing in
bitsandbytes or transformers selects it on CUDA, hence this module: it sets each layer's `forward`.
"""

from __future__ import annotations

import types
from typing import Any

from catalog.errors import InvalidInput

WEIGHT_ONLY = "weight-only"
LLM_INT8 = "llm-int8"
CHOICES = (WEIGHT_ONLY, LLM_INT8)


def check_choice(value: str) -> str:
    if value not in CHOICES:
        raise InvalidInput(f"--int8-matmul must be one of {', '.join(CHOICES)} (got {value!r})")
    return value


def use_weight_only(model: Any) -> int:
    """Make every bitsandbytes int8 layer of `model` compute weight-only; returns how many it changed."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    for layer in layers:
        layer.forward = types.MethodType(_weight_only_forward, layer)
    return len(layers)


def _weight_only_forward(self: Any, x: Any) -> Any:
    """`Linear8bitLt.forward` with bitsandbytes' dequantise-and-multiply autograd function."""
    from bitsandbytes.autograd._functions import MatMul8bitFp

    self.state.is_training = self.training
    if self.weight.CB is not None:
        self.init_8bit_state()  # moves the int8 weight and its scales into the layer's state
    if self.bias is not None and self.bias.dtype != x.dtype:
        self.bias.data = self.bias.data.to(x.dtype)
    out = MatMul8bitFp.apply(x, self.weight, None, self.bias, self.state)
    if not self.state.has_fp16_weights and self.state.CB is not None:
        self.weight.data = self.state.CB
    return out
