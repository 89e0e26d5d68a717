"""How `generate` cuts its rows into batches: longest prompts first, a stacked batch's models together
(`batch_order`), and for the graph decoding loop on a GPU as many rows as its free memory takes.

A decoding step of the graph loop (worker/evaluation/graph_decoding.py) costs about the same for 16 rows
as for a few hundred: it is bound by its kernels, not by the GPU's arithmetic or memory (135M and 1.5B
shapes both took ~8.7 ms a step at 50 rows on an H200, bench/results/fast-decoding-*.json). So on a
GPU the loop batches as many rows as the free memory holds, longest prompts first, instead of
--batch-size: each row costs its KV cache (prompt + max_new_tokens slots, every layer's keys and
values), the prefill's 4-D mask (prompt x slots), its logits and the prefill's per-layer temporaries.
FREE_SHARE of the free memory is planned; a batch that still runs out of memory is split in two and
retried (worker/evaluation/generation.py). A stacked batch (K models) keeps a multiple of K rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FREE_SHARE = 0.6
"""Of the GPU's free memory at the start of a call, the share the batches plan to fill."""
MAX_ROWS = 512
"""Rows a batch holds at most per model (the host reads each row's tokens at every look)."""


def row_bytes(config: Any, prompt_len: int, max_new: int, dtype_bytes: int) -> int:
    """The memory one row of a batch needs, for a model config (transformers' PreTrainedConfig)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = int(text.hidden_size), int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    mlp = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    slots = prompt_len + max_new
    kv = 2 * layers * kv_heads * head_dim * slots * dtype_bytes
    prefill_mask = prompt_len * slots * dtype_bytes
    temporaries = prompt_len * (10 * hidden + 6 * mlp) * dtype_bytes // 2
    logits = int(text.vocab_size) * 6  # the last position's logits and their fp32 copy
    return kv + prefill_mask + temporaries + logits


def plan_batches(
    order: Sequence[int],
    lengths: Sequence[int],
    *,
    bytes_for: Any,
    budget: int,
    multiple: int = 1,
) -> list[list[int]]:
    """`order` (longest prompt first) cut into batches that fit `budget` bytes: each batch takes rows
    while `rows x bytes_for(its first, longest, row's length)` fits, a multiple of `multiple` rows (the
    models of a stacked batch), at most MAX_ROWS x multiple, at least `multiple`."""
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        per_row = max(1, bytes_for(lengths[order[start]]))
        rows = min(budget // per_row, MAX_ROWS * multiple)
        rows = max(multiple, rows - rows % multiple)
        batches.append(list(order[start : start + rows]))
        start += rows
    return batches


def batch_order(
    ids: list[list[int]], prompts: Sequence[str], adapter_names: list[str] | None, batch_size: int
) -> tuple[list[int], int]:
    """The order rows are generated in (longest prompt first; stable, so ties keep prompt order) and the
    rows per batch: `batch_size`, times K when the rows name K adapters. Then the rows of one prompt
    text are kept next to each other, so a batch holds the same prompts for every adapter."""
    if adapter_names is None:
        return sorted(range(len(ids)), key=lambda i: -len(ids[i])), batch_size
    if len(adapter_names) != len(prompts):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(prompts)} prompts")
    first: dict[str, int] = {}
    group = [first.setdefault(prompt, i) for i, prompt in enumerate(prompts)]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), group[i]))
    return order, batch_size * max(1, len(set(adapter_names)))
