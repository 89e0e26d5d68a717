"""Which scaled-dot-product-attention kernels PyTorch may pick while ft trains and generates.

PyTorch prefers cuDNN attention on an H100 in bf16. cuDNN plans an execution graph for each new tensor
shape (about 2 ms of CPU time a decoding call, about 0.2 s a training forward + backward, as measured
below), and its graph cache is keyed on the shape:
- In decoding the key length grows by one every step, so every step of every layer builds a graph.
- In training each new padded batch width builds a forward and a backward graph.

Flash and memory-efficient attention compute the same thing without a per-shape plan, so ft leaves
cuDNN out of the candidates; the math kernel stays as the last resort. Measured on an H100 with
SmolLM2-135M (bench/bench_attention.py, bench/results/attention-*.json):
- decoding 16 fault prompts, 128 new tokens, bf16: 87 ms a step with cuDNN allowed, 24 ms without (3.7x);
- training, 32 micro-batches of 8 real rows: 9.8 s against 4.3 s on a first pass over 26 new shapes,
  4.15 s against 4.33 s once every shape has been seen (cuDNN 4% faster there).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch.nn.attention import SDPBackend, sdpa_kernel

WITHOUT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""The SDPA backends ft allows, in PyTorch's order of preference."""


@contextmanager
def without_cudnn_attention() -> Iterator[None]:
    """Within it (or in a function it decorates), `scaled_dot_product_attention` never picks cuDNN."""
    with sdpa_kernel(WITHOUT_CUDNN):
        yield
