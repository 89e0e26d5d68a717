"""The decoding step's attention: two matmuls, in buckets of rows, each over the cache slots its rows use.

The graph loop (worker/evaluation/graph_decoding.py) left-pads a batch to its longest prompt and attends
one new token a row over a static cache. Through SDPA, cuDNN runs its prefill kernel for that one query
(64-query tiles): on an H200 it was 2.66 of a 3.94 ms step of the 135M shape with Liger, 50 rows over
2,281 slots (bench/results/profile-decode-step-NVIDIA_H200-a886d79.json).

So a one-token step attends here (registered in transformers' AttentionInterface as `ATTENTION_NAME`)
with the query heads of each key/value head as one small matrix: scores = mask + scale q @ K^T by one
batched GEMM into a copy of the mask, softmax (accumulated in fp32, as transformers' eager attention
does), then @ V: four kernels a bucket and layer. At 90cccf9 it was six (matmul, cast, mask add,
softmax, cast, matmul); the four are not measured yet. With six, the step took 2.99 ms
(profile-decode-step-NVIDIA_H200-90cccf9.json), and in the decoding bench the steps of 50 fault
prompts took 1.265 s against 1.345 s through SDPA per bucket (135M) and 1.515 s against 1.695 s (1.5B;
fast-decoding-NVIDIA_H200-90cccf9.json). Greedy texts then equal `generate`'s on 40 of 50 rows for the
135M shape (randomly initialised: near ties) against 50 of 50 through cuDNN.

Rows come in buckets: a run of consecutive rows (longest prompts first, so their padding grows down the
batch) reads keys, values and mask from the bucket's first used slot on. The slots a bucket skips are
masked for all its rows, so the result is the same attention; the views are fixed for the batch, so the
step is still one CUDA graph. Flash-decoding kernels (flash-attn's `flash_attn_with_kvcache`,
FlexAttention's decoding path) would do a layer's attention in one kernel, skipping the padding, but
flash-attn is not a dependency and FlexAttention compiles per batch shape; neither is measured here.

`plan_buckets` chooses the cut: a bucket costs its rows x its slots, plus BUCKET_COST for the kernels
one more bucket adds to every layer; the cheapest cut is found exactly over at most MAX_GROUPS runs.
`bench/bench_fast_decoding.py --no-buckets-baseline --sdpa-step-baseline` measures both choices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "ft_bucketed_sdpa"
BUCKET_COST = 65536
"""Row-slots one more bucket must save to be worth it. Its kernels (7 a layer then, 5 now) cost more
than the slots they skip save: on an H200 (135M shape, the 50 fault prompts, the plan two buckets reading 45%
of the row-slots of one) the steps took 1.265 s against 1.29 s with one bucket
(bench/results/fast-decoding-NVIDIA_H200-90cccf9.json), so a step's attention is bound by its kernels,
not by the slots it reads, and only a large saving is worth a bucket."""

ALIGN = 16
"""Slots a bucket's first slot and the cache's length are multiples of: cuDNN's attention reads its
mask, keys and values with 16-byte loads, and a view of a bf16 mask from an odd slot or row faulted on
an H200 ("CUDA error: misaligned address", 135M shape, 2026-12-03)."""
MAX_GROUPS = 64
"""Rows are cut at most at this many places (the plan is exact over runs of rows this coarse)."""

Plan = list[tuple[int, int, int]]
"""(first row, end row, first slot) of each bucket, covering the batch's rows in order."""

_SDPA_STEPS = False
"""The benches' ablation (`sdpa_steps`): each bucket through transformers' SDPA, as before 2026-12-04."""

_PLAN: ContextVar[Plan | None] = ContextVar("ft_attention_buckets", default=None)


def align(slots: int) -> int:
    """`slots` rounded up to a multiple of ALIGN."""
    return -(-slots // ALIGN) * ALIGN


def plan_buckets(starts: list[int], slots: int, cost: int | None = None) -> Plan:
    """Buckets for rows whose first used slot is `starts[r]` in a cache of `slots` slots; a bucket
    starts at a multiple of ALIGN slots (the slots before a row's first are masked for it anyway)."""
    cost = BUCKET_COST if cost is None else cost
    starts = [s - s % ALIGN for s in starts]
    rows = len(starts)
    size = max(1, -(-rows // MAX_GROUPS))
    cuts = list(range(0, rows, size)) + [rows]  # candidate bucket edges
    best, back = [0.0] + [float("inf")] * (len(cuts) - 1), [0] * len(cuts)
    for j in range(1, len(cuts)):
        low = slots
        for i in range(j - 1, -1, -1):
            low = min(low, min(starts[cuts[i] : cuts[i + 1]]))
            total = best[i] + (cuts[j] - cuts[i]) * (slots - low) + cost
            if total < best[j]:
                best[j], back[j] = total, i
    plan: Plan = []
    j = len(cuts) - 1
    while j > 0:
        i = back[j]
        plan.append((cuts[i], cuts[j], min(starts[cuts[i] : cuts[j]])))
        j = i
    return plan[::-1]


def bucketed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A one-token step's attention, bucket by bucket of the current plan: the query heads of a key/value
    head as one matrix, mask + scaled scores by one batched GEMM over the bucket's slots, softmax, one
    more GEMM. Anything else goes to transformers' SDPA."""
    plan = _PLAN.get()
    unusual = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or kwargs.get("dropout")
    if plan is None or query.shape[2] != 1 or attention_mask is None or unusual:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if _SDPA_STEPS:  # the ablation: transformers' SDPA over each bucket
        outs = [
            sdpa_attention_forward(
                module, query[a:b], key[a:b, :, s:], value[a:b, :, s:], attention_mask[a:b, :, :, s:],
                scaling=scaling, **kwargs,
            )[0]
            for a, b, s in plan
        ]  # fmt: skip
        return torch.cat(outs, 0) if len(outs) > 1 else outs[0], None
    rows, heads, _, dim = query.shape
    kv = key.shape[1]
    group = heads // kv
    grouped = query.reshape(rows, kv, group, dim)  # the query heads of each key/value head
    scale = dim**-0.5 if scaling is None else scaling
    outs = []
    for a, b, s in plan:
        n, length = b - a, key.shape[2] - s
        # a copy of the mask for each query head takes the scores in place: mask + scale q K^T, one GEMM
        scores = (
            attention_mask[a:b, :, :, s:].expand(n, kv, group, length).clone().reshape(n * kv, group, length)
        )
        keys = key[a:b, :, s:].reshape(n * kv, length, dim)  # a view of the static cache
        scores.baddbmm_(grouped[a:b].reshape(n * kv, group, dim), keys.transpose(1, 2), alpha=scale)
        weights = scores.softmax(-1)  # accumulates in fp32 for bf16 (as eager attention, which rounds too)
        outs.append(
            torch.bmm(weights, value[a:b, :, s:].reshape(n * kv, length, dim)).view(n, kv, group, dim)
        )
    out = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(ATTENTION_NAME, bucketed_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # masks made as for SDPA (the loop's are 4-D)


@contextmanager
def buckets(config: Any, plan: Plan | None) -> Iterator[int]:
    """Within it, a model of `config` (attention "sdpa") attends a one-token step in `plan`'s buckets;
    with no plan or another attention, nothing changes. Yields the buckets in use."""
    if plan is None or config._attn_implementation != "sdpa":
        yield 1
        return
    token = _PLAN.set(plan)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield len(plan)
    finally:
        config._attn_implementation = "sdpa"
        _PLAN.reset(token)


@contextmanager
def bucket_cost(cost: int) -> Iterator[None]:
    """Within it, plans weigh one more bucket at `cost` row-slots (a bench's ablation: a huge cost
    gives one bucket a batch, as before the buckets)."""
    global BUCKET_COST
    before, BUCKET_COST = BUCKET_COST, cost
    try:
        yield
    finally:
        BUCKET_COST = before


@contextmanager
def sdpa_steps() -> Iterator[None]:
    """Within it, each bucket attends through transformers' SDPA (cuDNN or flash on a GPU) instead of
    the two matmuls (a bench's ablation)."""
    global _SDPA_STEPS
    before, _SDPA_STEPS = _SDPA_STEPS, True
    try:
        yield
    finally:
        _SDPA_STEPS = before
