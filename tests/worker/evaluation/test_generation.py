"""The generation engine on the tiny real Llama (CPU, fp32): batched greedy output equals one prompt at a
time, order, EOS, the repeated-line stop (the criterion on real token ids, and end to end on a tiny model
trained here to loop), seeded sampling, config validation, and peft prompt-learning adapters in batches.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from catalog.errors import InvalidInput
from tests.conftest import FAULTS_TEST, REPO
from worker.evaluation.generation import (
    GenerationCancelled,
    GenerationConfig,
    eos_token_ids,
    generate,
    generate_one_at_a_time,
)
from worker.evaluation.stopping import RepeatedLineCriteria, cut_at_repeated_line

PROMPTS = [
    "a",
    "发动机漏油 故障 检测",
    "hello world this is a much longer prompt with many tokens in it " * 3,
    "x_y",
    "类型#上衣*材质#牛仔布*风格#简约",
    "b c",
    "Below is an instruction",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _load(model_dir) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _chaotic(model_dir) -> torch.nn.Module:
    """The tiny model with its matrices shaken: freshly initialised, it only echoes the last token,
    which would hide padding bugs; shaken, every prompt gets a different, prompt-dependent completion."""
    model = _load(model_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def chaotic(tiny_model_dir):
    return _chaotic(tiny_model_dir)


BIGRAMS = {
    "t": "x",
    "x": "\n",
    "\n": "a",
    "a": "b",
    "b": "c",
    "c": "\n",
    "p": "o",
    "o": "k",
    "g": "m",
    "m": "n",
    "n": "m",
}
"""Each generated token of the `looping` model, by the one before. "repeat" (ends in t) loops on
"x\nabc\nabc\n...", "stop" (ends in p) says "ok" then EOS, "long" (ends in g) says "mnmn..." forever."""


@pytest.fixture(scope="module")
def looping(tiny_model_dir, tok):
    """The tiny Llama wired by hand into a bigram model: attention and MLP outputs zeroed, so the
    last hidden state is the last token's embedding; embeddings are one-hot, and the (untied) head maps
    each token of BIGRAMS to its successor and "k" to EOS. Deterministic, and no training needed."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    def one(text: str) -> int:
        (token,) = tok(text)["input_ids"]
        return token

    pairs = [(one(a), one(b)) for a, b in BIGRAMS.items()] + [(one("k"), tok.eos_token_id)]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        emb.zero_()
        head.zero_()
        for slot, (src, dst) in enumerate(pairs):
            emb[src, slot] = 1.0
            head[dst, slot] = 10.0
    return model.eval()


# ---------------------------------------------------------------- batching


def test_batched_greedy_equals_one_at_a_time(chaotic, tok):
    lengths = {len(tok(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) >= 5  # the batches really are padded
    cfg = GenerationConfig(max_new_tokens=24, batch_size=3)
    batched = generate(chaotic, tok, PROMPTS, cfg)
    single = generate_one_at_a_time(chaotic, tok, PROMPTS, cfg)
    assert batched.texts == single.texts
    assert len(set(batched.texts)) == len(PROMPTS)
    assert batched.new_tokens == single.new_tokens == 24 * len(PROMPTS)
    assert batched.tokens_per_s > 0 and batched.seconds > 0
    assert batched.peak_memory_bytes is None  # CPU


def test_order_is_preserved(chaotic, looping, tok):
    cfg = GenerationConfig(max_new_tokens=16, batch_size=4)
    forward = generate(chaotic, tok, PROMPTS, cfg).texts
    backward = generate(chaotic, tok, PROMPTS[::-1], cfg).texts
    assert backward == forward[::-1]
    texts = generate(looping, tok, ["stop", "long", "repeat", "stop"], cfg).texts
    assert texts == ["ok", "mn" * 8, "x\nabc\nabc\nabc\nab", "ok"]


def test_eos_stops_and_model_eos_ids_count(looping, tok):
    cfg = GenerationConfig(max_new_tokens=40)
    result = generate(looping, tok, ["stop"], cfg)
    assert result.texts == ["ok"]
    assert result.new_tokens == len(tok("ok")["input_ids"]) + 1  # "ok" and the EOS
    newline = tok.convert_tokens_to_ids(tok.tokenize("\n"))[0]
    saved = looping.generation_config.eos_token_id
    looping.generation_config.eos_token_id = [tok.eos_token_id, newline]
    try:
        assert eos_token_ids(looping, tok) == [tok.eos_token_id, newline]
        assert generate(looping, tok, ["repeat"], cfg).texts == ["x"]
    finally:
        looping.generation_config.eos_token_id = saved


# ---------------------------------------------------------------- repeated lines


def _byte_token_ids(tok, data: bytes) -> list[int]:
    """One token per byte (GPT-2 byte-to-unicode mapping), to split a character across tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tok.convert_tokens_to_ids([table[b] for b in data])


def _run_criterion(tok, prompt_ids: list[int], rows: list[list[int]]) -> list[int | None]:
    """Feed `rows` (equal lengths) one token at a time; the step at which each row was first done."""
    criterion = RepeatedLineCriteria(tok, [tok.eos_token_id])
    first_done: list[int | None] = [None] * len(rows)
    for step in range(len(rows[0])):
        ids = torch.tensor([prompt_ids + row[: step + 1] for row in rows])
        done = criterion(ids, None)
        assert done.dtype == torch.bool and done.shape == (len(rows),)
        for r, flag in enumerate(done.tolist()):
            if flag and first_done[r] is None:
                first_done[r] = step
    return first_done


def test_repeated_line_criterion_on_real_token_ids(tok):
    enc = lambda s: tok(s)["input_ids"]  # noqa: E731
    repeats = enc("x_y_z\n发动机_部件故障_漏油\n\n\na_b_c\n发动机_部件故障_漏油\nmore text")
    unique = enc("x_y_z\n\n\n发动机_部件故障_漏\nab_c\n ab_c.\n发动机_部件故障_漏油 and more")[: len(repeats)]
    unique += [tok.eos_token_id] * (len(repeats) - len(unique))
    first_done = _run_criterion(tok, enc("prompt: 三元组\n"), [repeats, unique])
    completes_repeat = len(enc("x_y_z\n发动机_部件故障_漏油\n\n\na_b_c\n发动机_部件故障_漏油\n")) - 1
    assert first_done[0] == completes_repeat
    assert first_done[1] is None or unique[first_done[1]] == tok.eos_token_id  # only EOS ends it


def test_repeated_line_criterion_with_a_character_split_across_tokens(tok):
    line = _byte_token_ids(tok, "漏油\n".encode())  # "\n" arrives with the last byte of 油 pending
    row = line + line + _byte_token_ids(tok, b"tail")
    assert _run_criterion(tok, [], [row]) == [2 * len(line) - 1]


def test_eos_marks_a_row_done(tok):
    criterion = RepeatedLineCriteria(tok, [tok.eos_token_id])
    assert criterion(torch.tensor([[5, 6], [5, tok.eos_token_id]]), None).tolist() == [False, True]
    assert criterion.stopped_rows == [False, True]


@pytest.mark.parametrize(
    "text, cut",
    [
        ("a_b_c\nd_e_f\na_b_c\nmore", "a_b_c\nd_e_f\n"),
        ("a_b_c\n\n\nd_e_f\n\n", "a_b_c\n\n\nd_e_f\n\n"),  # blank lines never repeat
        ("a_b_c\n a_b_c \nx", "a_b_c\n"),  # compared stripped
        ("a_b_c\na_b_c", "a_b_c\na_b_c"),  # the last line is not complete
        ("", ""),
    ],
)
def test_cut_at_repeated_line(text, cut):
    assert cut_at_repeated_line(text) == cut


def test_repeated_line_stop_end_to_end(looping, tok):
    prompts = ["repeat", "long", "stop"]
    loose = generate(looping, tok, prompts, GenerationConfig(max_new_tokens=40))
    assert loose.texts[0].startswith("x\nabc\nabc\nabc\nabc\n")
    assert loose.new_tokens == 40 + 40 + 3
    cfg = GenerationConfig(max_new_tokens=40, stop_on_repeated_line=True)
    result = generate(looping, tok, prompts, cfg)
    # the repeated row stops right after its duplicate line, the others run on (or stop on EOS)
    assert result.texts == ["x\nabc", "mn" * 20, "ok"]
    assert result.new_tokens == len("x\nabc\nabc\n") + 40 + 3
    assert generate_one_at_a_time(looping, tok, prompts, cfg).texts == result.texts


def test_static_cache_gives_the_dynamic_cache_texts(chaotic, looping, tok):
    """The static KV cache (what transformers compiles on CUDA) decodes padded batches exactly as the
    dynamic one, EOS and the repeated-line stop included."""
    for model, prompts, stop in ((chaotic, PROMPTS, False), (looping, ["repeat", "long", "stop"], True)):
        cfg = GenerationConfig(max_new_tokens=24, batch_size=3, stop_on_repeated_line=stop)
        dynamic = generate(model, tok, prompts, cfg)
        static = generate(model, tok, prompts, GenerationConfig(**{**vars(cfg), "static_cache": True}))
        assert static.texts == dynamic.texts and static.new_tokens == dynamic.new_tokens


# ---------------------------------------------------------------- sampling, config, plumbing


def test_sampling_is_reproducible_with_a_seed_and_leaves_global_rng_alone(chaotic, tok):
    cfg = GenerationConfig(max_new_tokens=20, sample=True, temperature=0.9, top_p=0.95, seed=7)
    state = torch.random.get_rng_state()
    first = generate(chaotic, tok, PROMPTS[:4], cfg).texts
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate(chaotic, tok, PROMPTS[:4], cfg).texts == first
    other = generate(chaotic, tok, PROMPTS[:4], GenerationConfig(max_new_tokens=20, sample=True, seed=8))
    assert other.texts != first
    assert first != generate(chaotic, tok, PROMPTS[:4], GenerationConfig(max_new_tokens=20)).texts


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"max_new_tokens": 2.5}, "--max-new-tokens"),
        ({"batch_size": 0}, "--batch-size"),
        ({"temperature": 0.0}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
    ],
)
def test_config_validation_names_the_flag(kwargs, flag):
    with pytest.raises(InvalidInput, match=flag):
        GenerationConfig(**kwargs)


def test_progress_restores_state_and_pad_fallback(tiny_model_dir, chaotic, tok):
    events: list[dict] = []
    chaotic.train()
    cfg = GenerationConfig(max_new_tokens=4, batch_size=3)
    result = generate(chaotic, tok, PROMPTS, cfg, on_progress=events.append)
    assert [(e["done"], e["total"]) for e in events] == [(3, 7), (6, 7), (7, 7)]
    assert all(e["tokens_per_s"] > 0 for e in events)
    assert chaotic.training and tok.padding_side == "right"
    chaotic.eval()

    no_pad = AutoTokenizer.from_pretrained(tiny_model_dir)
    no_pad.pad_token = None
    assert generate(chaotic, no_pad, PROMPTS, cfg).texts == result.texts  # pads with EOS instead
    assert no_pad.pad_token is None

    empty = generate(chaotic, tok, [], cfg)
    assert empty.texts == [] and empty.new_tokens == 0


def test_should_stop_cancels(chaotic, tok):
    with pytest.raises(GenerationCancelled):
        generate(
            chaotic, tok, PROMPTS, GenerationConfig(max_new_tokens=4, batch_size=2), should_stop=lambda: True
        )


# ---------------------------------------------------------------- peft


@pytest.mark.parametrize(
    "peft_config",
    [
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=32),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False),
    ],
    ids=["prefix-tuning", "p-tuning", "prompt-tuning", "lora"],
)
def test_peft_models_generate_in_batches(tiny_model_dir, tok, peft_config):
    torch.manual_seed(0)
    model = get_peft_model(_chaotic(tiny_model_dir), peft_config)
    cfg = GenerationConfig(max_new_tokens=16, batch_size=4)
    batched = generate(model, tok, PROMPTS, cfg)
    assert batched.texts == generate_one_at_a_time(model, tok, PROMPTS, cfg).texts
    # and each prompt's completion is what the adapter's own training forward predicts, token by token
    # (no cache, no padding): the reference that does not depend on any generate() implementation
    for i in (1, 2, 4):
        assert _teacher_forced(model, tok, PROMPTS[i], 16) == batched.texts[i]


def _teacher_forced(model, tok, prompt: str, new_tokens: int) -> str:
    """Greedy decoding by re-running the peft model's forward (as training calls it) on the whole
    sequence for every new token, stopping at EOS."""
    ids = tok(prompt)["input_ids"]
    eos = set(eos_token_ids(model, tok))
    out: list[int] = []
    model.eval()
    with torch.inference_mode():
        for _ in range(new_tokens):
            x = torch.tensor([ids + out])
            token = int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
    return tok.decode(out, skip_special_tokens=True).rstrip()


# ---------------------------------------------------------------- the benchmark script


def test_bench_script_writes_its_report(tiny_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_generation", REPO / "bench" / "bench_generation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--model", str(tiny_model_dir), "--data", str(FAULTS_TEST), "--limit", "3",
            "--max-new-tokens", "4", "--batch-size", "2"]  # fmt: skip
    path = bench.main([*args, "--template", "chat", "--out", str(tmp_path)])
    report = json.loads(path.read_text(encoding="utf-8"))
    assert path.name.startswith("generation-cpu-")
    assert report["prompts"] == 3 and report["dtype"] == "float32"
    assert report["identical_fraction"] == 1.0 and report["first_differences"] == []
    assert report["one_at_a_time"]["new_tokens"] == report["batched"]["new_tokens"] == 12
    assert report["speedup"] > 0 and report["config"]["batch_size"] == 2
