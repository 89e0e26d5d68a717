"""Which scaled-dot-product-attention kernels PyTorch may pick while ft trains and generates.

PyTorch prefers cuDNN attention on an H100 in bf16. cuDNN builds an execution graph for each new
tensor shape, and that costs milliseconds of CPU time per call. In a decoding step the key length grows
by one every step, so every step and every layer pays for it.

Measured on an H100 (bench/results/decode-step-*.json), with SmolLM2-135M, batch 16:
- a bf16 decoding step took 44 ms, against 41 ms in fp32, which never takes the cuDNN path;
- cuDNN attention was 59 of the 154 ms of CPU time of one profiled step (30 calls).

Flash and memory-efficient attention compute the same thing without a per-shape plan, so ft leaves
cuDNN out of the candidates; the math kernel stays as the last resort.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel

WITHOUT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""The SDPA backends ft allows, in PyTorch's order of preference."""


def without_cudnn_attention() -> AbstractContextManager[None]:
    """A context in which `scaled_dot_product_attention` never picks cuDNN attention."""
    return sdpa_kernel(WITHOUT_CUDNN)
