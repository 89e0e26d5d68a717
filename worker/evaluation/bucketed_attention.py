"""The decoding step's attention in buckets of rows, each over the cache slots its rows use.

The graph loop (worker/evaluation/graph_decoding.py) left-pads a batch to its longest prompt, and SDPA
attends every row's new token over every slot of the static cache, padding included: the mask zeroes
the padding's weights but the kernel still reads and scores it. On an H200 (135M shape, 50 fault
prompts of 241 tokens on average padded to 1,668, + 256 new) attention was 1.8 ms of a 3.1 ms step
(bench/results/profile-decode-step-NVIDIA_H200-4afc948.txt), most of it over padding.

Flash kernels skip padding when told each row's length (flash-attn's `cache_seqlens`), which SDPA does
not take, and flash-attn is not a dependency. So the step's attention here (registered in
transformers' AttentionInterface as `ATTENTION_NAME`) calls transformers' own SDPA function once per
bucket: a run of consecutive rows (longest prompts first, so their padding grows down the batch), with
keys, values and mask from the bucket's first used slot on. The slots a bucket skips are masked for
all its rows, so the result is the same attention; the views are fixed for the batch, so the step is
still one CUDA graph.

`plan_buckets` chooses the cut: a bucket costs its rows x its slots, plus BUCKET_COST for the kernels
one more bucket adds to every layer; the cheapest cut is found exactly over at most MAX_GROUPS runs.
Its speed on a GPU is not measured yet (`bench/bench_fast_decoding.py --no-buckets-baseline` does).
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
BUCKET_COST = 16384
"""Row-slots one more bucket must save to be worth it: its SDPA call, slicing and concatenation are ~4
more kernels a layer, ~12 us on an H200, about what attending 16k row-slots costs there."""
ALIGN = 16
"""Slots a bucket's first slot and the cache's length are multiples of: cuDNN's attention reads its
mask, keys and values with 16-byte loads, and a view of a bf16 mask from an odd slot or row faulted on
an H200 ("CUDA error: misaligned address", 135M shape, 2026-12-03)."""
MAX_GROUPS = 64
"""Rows are cut at most at this many places (the plan is exact over runs of rows this coarse)."""

Plan = list[tuple[int, int, int]]
"""(first row, end row, first slot) of each bucket, covering the batch's rows in order."""

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


def bucketed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, once per bucket of the current plan for a one-token step."""
    plan = _PLAN.get()
    if plan is None or query.shape[2] != 1 or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outs = [
        sdpa_attention_forward(
            module, query[a:b], key[a:b, :, s:], value[a:b, :, s:], attention_mask[a:b, :, :, s:], **kwargs
        )[0]
        for a, b, s in plan
    ]
    return torch.cat(outs, 0), None


AttentionInterface.register(ATTENTION_NAME, bucketed_sdpa)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # masks made as for SDPA (the loop's are 4-D)


@contextmanager
def buckets(config: Any, plan: Plan | None) -> Iterator[int]:
    """Within it, a model of `config` (attention "sdpa") attends a one-token step in `plan`'s buckets;
    with no plan, one bucket or another attention, nothing changes. Yields the buckets in use."""
    if plan is None or len(plan) < 2 or config._attn_implementation != "sdpa":
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
