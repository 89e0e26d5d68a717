"""The decoding step's attention in buckets of rows (worker/evaluation/bucketed_attention.py) and the
prefill in groups of rows (worker/evaluation/grouped_prefill.py): the plan is the cheapest cut (against
every cut of a small batch), the step's two-matmul attention equals SDPA's, and decoding with the batch
cut into buckets and groups gives generate's greedy texts on the tiny real Llama (CPU, fp32) for padded
batches, LoRA, p-tuning and stacked LoRA rows."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import LoraConfig, PromptEncoderConfig, get_peft_model
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.worker.evaluation.test_generation import PROMPTS, _chaotic, chaotic, tok  # noqa: F401
from tests.worker.evaluation.test_multi_lora import STACKABLE, adapter_dirs, load  # noqa: F401
from worker.evaluation import bucketed_attention, graph_decoding, grouped_prefill
from worker.evaluation.bucketed_attention import _PLAN, ALIGN, align, plan_buckets
from worker.evaluation.bucketed_attention import bucketed_attention as step_attention
from worker.evaluation.generation import GenerationConfig, generate
from worker.evaluation.graph_decoding import GraphDecoder, TokenPicker
from worker.evaluation.multi_lora import BASE, stacked_lora


def cost(plan, slots, per_bucket):
    return sum((b - a) * (slots - s) + per_bucket for a, b, s in plan)


@pytest.mark.parametrize("starts", [[0, 3, 3, 40, 41, 90, 95], [0, 0, 0, 0], [5, 80, 81, 82, 83, 99]])
@pytest.mark.parametrize("per_bucket", [0, 30, 500])
def test_the_plan_is_the_cheapest_cut(starts, per_bucket):
    slots = 100
    plan = plan_buckets(starts, slots, cost=per_bucket)
    assert [a for a, _, _ in plan][0] == 0 and plan[-1][1] == len(starts)
    assert all(b == a2 for (_, b, _), (a2, _, _) in itertools.pairwise(plan))  # in order, no gaps
    # no row loses a slot it uses, and a bucket's views start aligned (cuDNN faults on a misaligned one)
    assert all(s == min(starts[a:b]) // ALIGN * ALIGN for a, b, s in plan)
    aligned = [s // ALIGN * ALIGN for s in starts]
    cheapest = min(
        cost(
            [(a, b, min(aligned[a:b])) for a, b in itertools.pairwise([0, *cut, len(starts)])],
            slots,
            per_bucket,
        )
        for k in range(len(starts))
        for cut in itertools.combinations(range(1, len(starts)), k)
    )
    assert cost(plan, slots, per_bucket) == cheapest


def test_a_long_prompt_among_short_ones_gets_its_own_bucket():
    assert plan_buckets([0] + [1400] * 49, 1924) == [(0, 1, 0), (1, 50, 1392)]  # 1392 = 87 x 16
    assert plan_buckets([7] * 50, 1924) == [(0, 50, 0)]  # nothing to save: one bucket


def test_cache_lengths_are_aligned():
    assert [align(n) for n in (1, 16, 17, 1924, 1925)] == [16, 16, 32, 1936, 1936]


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_the_step_attention_equals_sdpa(kv_heads):
    torch.manual_seed(0)
    rows, heads, slots, dim = 5, 4, 40, 8
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    query = torch.randn(rows, heads, 1, dim, dtype=torch.float64)
    key, value = (torch.randn(rows, kv_heads, slots, dim, dtype=torch.float64) for _ in range(2))
    starts = [0, 3, 17, 17, 33]  # each row's first used slot (left padding)
    mask = torch.zeros(rows, 1, 1, slots, dtype=torch.float64)
    for r, s in enumerate(starts):
        mask[r, ..., :s] = torch.finfo(torch.float64).min
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    before = mask.clone()
    for plan in ([(0, 5, 0)], [(0, 1, 0), (1, 2, 0), (2, 4, 16), (4, 5, 32)]):
        token = _PLAN.set(plan)
        try:
            got, _ = step_attention(module, query, key, value, mask, scaling=0.3)
        finally:
            _PLAN.reset(token)
        assert got.shape == want.shape == (rows, 1, heads, dim)
        torch.testing.assert_close(got, want)
        assert torch.equal(mask, before)  # the scores are taken in a copy of the mask, never in it


@pytest.fixture
def every_row_its_bucket(monkeypatch):
    """Every row its own bucket in each step and its own group in the prefill; counts grouped prefills."""
    monkeypatch.setattr(bucketed_attention, "BUCKET_COST", 0)
    monkeypatch.setattr(grouped_prefill, "PREFILL_COST", 0)
    grouped = []

    def counting(*args, **kwargs):
        logits = grouped_prefill.grouped_prefill(*args, **kwargs)
        grouped.append(logits is not None)
        return logits

    monkeypatch.setattr(graph_decoding, "grouped_prefill", counting)
    return grouped


def both(model, tokenizer, prompts, **cfg):
    hf = generate(model, tokenizer, prompts, GenerationConfig(engine="generate", **cfg))
    graph = generate(model, tokenizer, prompts, GenerationConfig(engine="graph", **cfg))
    return hf, graph


def test_bucketed_steps_equal_generate(chaotic, tok, every_row_its_bucket):  # noqa: F811
    enc = tok(PROMPTS, padding=True, return_tensors="pt", padding_side="left")
    decoder = GraphDecoder(chaotic, max_new_tokens=4, eos=[], pad_id=tok.pad_token_id,
                           picker=TokenPicker(False, 1.0, 1.0), graphs=False)  # fmt: skip
    with torch.inference_mode():
        decoder.run(enc["input_ids"], enc["attention_mask"])
    assert decoder.buckets > 2  # the prompts' lengths differ: the batch was cut
    assert chaotic.config._attn_implementation == "sdpa"  # and put back
    hf, graph = both(chaotic, tok, PROMPTS, max_new_tokens=24, batch_size=7)
    assert len(set(hf.texts)) == len(PROMPTS)
    assert graph.texts == hf.texts
    assert all(every_row_its_bucket)  # every batch prefilled in groups


@pytest.mark.parametrize(
    "peft_config",
    [LoraConfig(r=4, init_lora_weights=False),
     PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=32)],
    ids=["lora", "p-tuning"],
)  # fmt: skip
def test_bucketed_adapters_equal_generate(tiny_model_dir, tok, peft_config, every_row_its_bucket):  # noqa: F811
    torch.manual_seed(0)
    model = get_peft_model(_chaotic(tiny_model_dir), peft_config).eval()
    hf, graph = both(model, tok, PROMPTS, max_new_tokens=16, batch_size=7)
    assert graph.texts == hf.texts
    # LoRA prefills in groups; p-tuning's virtual tokens come before the padding: one group
    if peft_config.peft_type == "LORA":
        assert every_row_its_bucket and all(every_row_its_bucket)
    else:
        assert not every_row_its_bucket


def test_bucketed_stacked_lora_rows_equal_generate(tiny_model_dir, adapter_dirs, tok, every_row_its_bucket):  # noqa: F811
    names = list(STACKABLE)
    peft = load(tiny_model_dir, adapter_dirs, names)
    rows = [m for m in [*names, BASE] for _ in PROMPTS]
    with stacked_lora(peft, names) as model:
        cfg = {"max_new_tokens": 8, "batch_size": 7}
        hf = generate(model, tok, PROMPTS * 4, GenerationConfig(engine="generate", **cfg), adapter_names=rows)
        graph = generate(model, tok, PROMPTS * 4, GenerationConfig(engine="graph", **cfg), adapter_names=rows)
    assert len(set(hf.texts)) > len(PROMPTS)  # the adapters differ
    assert graph.texts == hf.texts
    assert all(every_row_its_bucket)
