"""The graph decoding loop (worker/evaluation/graph_decoding.py) against transformers' `generate` on the
tiny real Llama, CPU, fp32: the same greedy texts and token counts for padded batches, EOS, the
repeated-line stop, a LoRA adapter, stacked LoRA adapters with per-row names and a freeze-style
model; seeded sampling as transformers samples; cancellation and progress from inside a batch; and
prompt-learning adapters of the three kinds; what it does not take is refused by name (engine="graph"),
and "auto" leaves a CPU to `generate`.

On CPU the loop runs its step eagerly; the CUDA graph capture of the same step is measured on a GPU
(bench/bench_fast_decoding.py), where the share of identical bf16 outputs is reported.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

from catalog.errors import InvalidInput
from tests.worker.evaluation.test_generation import PROMPTS, _chaotic, chaotic, looping, tok  # noqa: F401
from tests.worker.evaluation.test_multi_lora import PROMPTS as LORA_PROMPTS
from tests.worker.evaluation.test_multi_lora import STACKABLE, adapter_dirs, load  # noqa: F401
from worker.evaluation.generation import GenerationCancelled, GenerationConfig, generate
from worker.evaluation.graph_decoding import CHECK_EVERY, GraphDecoder, TokenPicker
from worker.evaluation.multi_lora import BASE, stacked_lora


def both(model, tokenizer, prompts, **cfg):
    """(generate's result, the graph loop's result) for the same prompts and settings."""
    hf = generate(model, tokenizer, prompts, GenerationConfig(engine="generate", **cfg))
    graph = generate(model, tokenizer, prompts, GenerationConfig(engine="graph", **cfg))
    return hf, graph


def test_greedy_padded_batches_equal_generate(chaotic, tok):  # noqa: F811
    hf, graph = both(chaotic, tok, PROMPTS, max_new_tokens=24, batch_size=3)
    assert len(set(hf.texts)) == len(PROMPTS)  # every prompt decodes differently: the test has teeth
    assert graph.texts == hf.texts
    assert graph.new_tokens == hf.new_tokens == 24 * len(PROMPTS)


@pytest.mark.parametrize("stop", [False, True], ids=["eos", "repeated-line"])
def test_eos_and_the_repeated_line_stop_equal_generate(looping, tok, stop):  # noqa: F811
    prompts = ["repeat", "long", "stop", "repeat"]
    hf, graph = both(looping, tok, prompts, max_new_tokens=40, batch_size=4, stop_on_repeated_line=stop)
    assert graph.texts == hf.texts
    assert graph.new_tokens == hf.new_tokens  # a stopped row counts the tokens generate counts
    if stop:
        assert graph.texts[0] == "x\nabc" and graph.new_tokens < 40 * 4


def test_a_batch_whose_rows_all_end_stops_early(looping, tok):  # noqa: F811
    hf, graph = both(looping, tok, ["stop", "stop"], max_new_tokens=200, batch_size=2)
    assert graph.texts == hf.texts == ["ok", "ok"] and graph.new_tokens == hf.new_tokens == 6


def test_a_lora_adapter_equals_generate(tiny_model_dir, tok):  # noqa: F811
    torch.manual_seed(0)
    model = get_peft_model(_chaotic(tiny_model_dir), LoraConfig(r=4, init_lora_weights=False)).eval()
    hf, graph = both(model, tok, PROMPTS, max_new_tokens=16, batch_size=4)
    assert graph.texts == hf.texts


def test_stacked_lora_rows_equal_generate(tiny_model_dir, adapter_dirs, tok):  # noqa: F811
    names = list(STACKABLE)
    peft = load(tiny_model_dir, adapter_dirs, names)
    rows = [m for m in [*names, BASE] for _ in LORA_PROMPTS]
    with stacked_lora(peft, names) as model:
        cfg = {"max_new_tokens": 12, "batch_size": 2}
        hf = generate(
            model, tok, LORA_PROMPTS * 4, GenerationConfig(engine="generate", **cfg), adapter_names=rows
        )
        graph = generate(
            model, tok, LORA_PROMPTS * 4, GenerationConfig(engine="graph", **cfg), adapter_names=rows
        )
    assert len(set(hf.texts)) > len(LORA_PROMPTS)  # the adapters differ
    assert graph.texts == hf.texts


def test_sampling_is_seeded_and_samples_as_generate(chaotic, tok):  # noqa: F811
    cfg = {
        "max_new_tokens": 20,
        "batch_size": 4,
        "sample": True,
        "temperature": 0.9,
        "top_p": 0.95,
        "seed": 7,
    }
    hf, graph = both(chaotic, tok, PROMPTS[:4], **cfg)
    assert graph.texts == hf.texts  # same warpers, same RNG draws
    again = generate(chaotic, tok, PROMPTS[:4], GenerationConfig(engine="graph", **cfg))
    assert again.texts == graph.texts
    other = generate(chaotic, tok, PROMPTS[:4], GenerationConfig(engine="graph", **{**cfg, "seed": 8}))
    assert other.texts != graph.texts


def test_cancel_and_progress_from_inside_a_batch(chaotic, tok):  # noqa: F811
    steps: list[dict] = []
    cfg = GenerationConfig(engine="graph", max_new_tokens=32, batch_size=7)
    generate(chaotic, tok, PROMPTS, cfg, on_step=steps.append)
    assert [s["batch_step"] for s in steps if s["batch_step"] % 16 == 0] == [16, 32]
    assert all(s["batch_rows"] == 7 and s["tokens_per_s"] > 0 for s in steps)
    with pytest.raises(GenerationCancelled):
        generate(chaotic, tok, PROMPTS, cfg, should_stop=lambda: True)


def test_a_look_that_says_stop_ends_the_batch(chaotic, tok):  # noqa: F811
    """Inside a batch the loop asks `should_stop` at its looks (every CHECK_EVERY steps, at most once a
    second); a look that says stop ends the batch there."""
    enc = tok(PROMPTS[:3], padding=True, return_tensors="pt", padding_side="left")
    pad = tok.pad_token_id
    decoder = GraphDecoder(
        chaotic, max_new_tokens=40, eos=[], pad_id=pad, picker=TokenPicker(False, 1.0, 1.0), graphs=True
    )
    with torch.inference_mode():
        rows = decoder.run(
            enc["input_ids"], enc["attention_mask"], on_look=lambda steps, _: steps >= 2 * CHECK_EVERY
        )
    assert all(len(r) == 40 for r in rows)
    assert all(pad not in r[: 2 * CHECK_EVERY] and set(r[2 * CHECK_EVERY :]) == {pad} for r in rows)


@pytest.mark.parametrize(
    "peft_config",
    [
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=32),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    ],
    ids=["prefix-tuning", "p-tuning", "prompt-tuning"],
)
def test_prompt_learning_adapters_equal_generate(tiny_model_dir, tok, peft_config):  # noqa: F811
    """Virtual tokens before the left-padded prompt, or a key/value prefix in the first cache slots,
    laid out as generate is fed them (itself checked against teacher forcing in test_generation.py)."""
    torch.manual_seed(0)
    model = get_peft_model(_chaotic(tiny_model_dir), peft_config).eval()
    hf, graph = both(model, tok, PROMPTS, max_new_tokens=16, batch_size=4)
    assert graph.texts == hf.texts and graph.new_tokens == hf.new_tokens


def test_what_the_loop_does_not_take(tiny_model_dir, tok):  # noqa: F811
    model = _chaotic(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask
    with pytest.raises(InvalidInput, match="cannot decode with attention implementation 'flash_attention_2'"):
        generate(model, tok, PROMPTS[:2], GenerationConfig(engine="graph", max_new_tokens=4))
    model.config._attn_implementation = "sdpa"
    # "auto" leaves everything on a CPU to generate
    cfg = {"max_new_tokens": 4, "batch_size": 2}
    auto = generate(model, tok, PROMPTS[:2], GenerationConfig(**cfg))
    assert (
        auto.engine == "generate"
        and generate(model, tok, PROMPTS[:2], GenerationConfig(engine="graph", **cfg)).engine == "graph"
    )
    with pytest.raises(InvalidInput, match="engine must be one of"):
        GenerationConfig(engine="fast")


def test_gpu_batches_take_as_many_rows_as_the_memory_plan_holds(tiny_model_dir):
    from transformers import AutoConfig

    from worker.evaluation.batches import MAX_ROWS, plan_batches, row_bytes

    config = AutoConfig.from_pretrained(tiny_model_dir)
    one, longer = row_bytes(config, 100, 256, 2), row_bytes(config, 100, 512, 2)
    kv_slot = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * (config.hidden_size // config.num_attention_heads)
        * 2
    )
    assert longer - one >= 256 * kv_slot  # every new-token slot holds each layer's key and value
    lengths = [300] * 4 + [100] * 20  # longest first, as batch_order sorts them
    order = list(range(len(lengths)))
    batches = plan_batches(order, lengths, bytes_for=lambda n: n, budget=1000, multiple=1)
    assert [len(b) for b in batches] == [
        3,
        3,
        10,
        8,
    ]  # a batch is as wide as its first row and sum(batches, []) == order
    stacked = plan_batches(order, lengths, bytes_for=lambda n: n, budget=1000, multiple=2)
    assert all(len(b) % 2 == 0 for b in stacked) and sum(stacked, []) == order
    assert [len(b) for b in plan_batches(order, lengths, bytes_for=lambda n: n, budget=10, multiple=2)][
        0
    ] == 2
    huge = plan_batches(list(range(2000)), [1] * 2000, bytes_for=lambda n: 1, budget=10**9)
    assert max(len(b) for b in huge) == MAX_ROWS


def test_auto_leaves_a_quantized_base_to_generate(tiny_model_dir):
    """Named, the engine takes it; "auto" does not, until bitsandbytes' kernels are measured under
    CUDA graphs (the reason is only asked on a GPU, where "auto" would pick the loop)."""
    from worker.evaluation.graph_decoding import unsupported_reason
    from worker.methods import get_method
    from worker.models.loading import load_base

    qlora = get_method("qlora")
    base = load_base(tiny_model_dir, "cpu", **qlora.load_kwargs(qlora.make_config({}), "cpu"))
    assert "quantized base" in unsupported_reason(base, streamer=None, auto=True)
    assert unsupported_reason(base, streamer=None) is None
    assert unsupported_reason(_chaotic(tiny_model_dir), streamer=None, auto=True) is None


def test_a_sliding_window_model_is_left_to_generate(tok):  # noqa: F811
    """A window cache keeps fewer slots than the loop's masks count (Mistral v0.1, Gemma 2/3, Phi-3)."""
    from transformers import MistralConfig, MistralForCausalLM

    from worker.evaluation.graph_decoding import unsupported_reason

    config = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)  # fmt: skip
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    assert "sliding-window" in unsupported_reason(model, streamer=None)
    with pytest.raises(InvalidInput, match="sliding-window"):
        generate(model, tok, PROMPTS[:2], GenerationConfig(engine="graph", max_new_tokens=20))
    assert generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=20)).engine == "generate"
