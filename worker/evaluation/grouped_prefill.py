"""The prompts' prefill in groups of rows, each over the slots its rows use.

The graph loop (worker/evaluation/graph_decoding.py) left-pads a batch to its longest prompt, and one
forward over the padded batch runs every padding token through every layer. On an H200, 50 fault
prompts of 241 tokens on average padded to 1,668 spent 0.73 s of 2.28 s in that prefill (1.5B shape,
bench/results/fast-decoding-NVIDIA_H200-a886d79.json), most of it on padding.

Here the rows (longest first, as the loop sorts them) are cut as the decoding step's buckets are
(`plan_buckets`, with PREFILL_COST for one more forward); each group runs one forward over its own slots
into a fresh `DynamicCache`, whose keys and values are then copied into the batch's `StaticCache` at the
same slots. The slots before a group's first are left zero; they are masked for its rows in every step.
Its attention leaves cuDNN out: cuDNN builds a plan for each new shape, and every group is one (a first
batch's groups took 1.3 s instead of 0.1 s with the plans cached, 135M shape).
A prompt-learning adapter's virtual tokens or prefix sit before the padding, so such a batch is one
group (`grouped_prefill` returns None and the loop prefills as before).

Written here: transformers prefills a static cache in one padded forward (or chunks one sequence's
prompt); it has no per-row-group prefill into a shared static cache.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.attention import sdpa_kernel
from transformers import DynamicCache, StaticCache

from worker.evaluation.bucketed_attention import plan_buckets
from worker.evaluation.multi_lora import adapter_rows
from worker.models.attention import WITHOUT_CUDNN

PREFILL_COST = 65536
"""Row-slots one more group must save: a group is one more eager forward (~600 launches, several ms of
host time for a 30-layer model), about what 64k tokens of a 135M model's prefill cost on an H200."""


def grouped_prefill(
    model: Any,
    input_ids: torch.Tensor,
    attend: torch.Tensor,
    positions: torch.Tensor,
    cache: StaticCache,
    cache_kwarg: str,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The last prompt token's logits of each row, with `cache` filled as one padded forward would
    fill it; None (nothing done) when one group is the cheapest plan."""
    rows, prompt_len = input_ids.shape
    plan = plan_buckets(attend[:, :prompt_len].int().argmax(-1).tolist(), prompt_len, cost=PREFILL_COST)
    if len(plan) < 2:
        return None
    try:
        stacked = adapter_rows(model)
    except ValueError:
        stacked = None
    logits = []
    for a, b, s in plan:
        mask = prefill_mask(attend[a:b, s:prompt_len], prompt_len - s, 0, dtype)
        group = DynamicCache()
        # cuDNN plans every new shape (~0.1 s each on an H200: 1.3 s for a first batch's groups)
        with stacked.only(a, b) if stacked is not None else nullcontext(), sdpa_kernel(WITHOUT_CUDNN):
            out = model(
                input_ids=input_ids[a:b, s:],
                attention_mask=mask,
                position_ids=positions[a:b, s:],
                use_cache=True,
                logits_to_keep=1,
                **{cache_kwarg: group},
            )
        logits.append(out.logits[:, -1])
        for layer, part in zip(cache.layers, group.layers, strict=True):
            if not layer.is_initialized:  # the whole batch's tensors, shaped as the group's
                layer.lazy_initialization(_empty(part.keys, rows), _empty(part.values, rows))
            layer.keys[a:b, :, s:prompt_len].copy_(part.keys)
            layer.values[a:b, :, s:prompt_len].copy_(part.values)
    for layer in cache.layers:
        layer.cumulative_length.fill_(prompt_len)  # where the first decoding step writes
    return torch.cat(logits, 0)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where `allowed`, the dtype's lowest value elsewhere: the 4-D masks the loop hands the model."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def prefill_mask(attend: torch.Tensor, queries: int, first: int, dtype: torch.dtype) -> torch.Tensor:
    """The (rows, 1, queries, slots) mask of a prefill whose query i sits at slot first + i: each row
    attends the slots `attend` allows, up to its own."""
    causal = torch.ones((queries, attend.shape[1]), dtype=torch.bool, device=attend.device).tril(first)
    return additive_mask(attend[:, None, None, :] & causal[None, None], dtype)


def _empty(like: torch.Tensor, rows: int) -> torch.Tensor:
    return like.new_zeros((rows, like.shape[1], 0, like.shape[3]))
