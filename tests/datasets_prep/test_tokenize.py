"""Tokenisation with the prompt masked: which tokens are trained on, truncation and its counters,
dropped rows, chat templates and batching, with the tiny model's real BPE tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from datasets_prep.rows import Row
from datasets_prep.templates import BUILTINS, render_prompt
from datasets_prep.tokenize import IGNORE_INDEX, SplitStats, tokenize_batch, tokenize_rows

PLAIN = BUILTINS["plain"][:2]
ALPACA = BUILTINS["alpaca"][:2]
CHAT = BUILTINS["chat"][:2]

ROWS = [
    Row(
        "从文本中抽取三元组：",
        "发动机启动后左前大灯闪烁，检查发现灯泡接触不良。",
        "大灯_部件故障_闪烁\n灯泡_部件故障_接触不良",
    ),
    Row("Summarise.", "The brake light stays on after the engine stops.", "brake light stays on"),
    Row("Repeat the input.", "", "ok"),
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_prompt_is_masked_and_labels_are_output_plus_eos(tok):
    for kind, body in (PLAIN, ALPACA):
        stats = SplitStats()
        batch = tokenize_batch(ROWS, tok, kind, body, max_len=4096, stats=stats)
        assert (
            stats.rows == len(ROWS) and stats.dropped == stats.prompt_truncated == stats.output_truncated == 0
        )
        for row, ids, labels in zip(ROWS, batch["input_ids"], batch["labels"], strict=True):
            prompt = tok(render_prompt(kind, body, row)).input_ids
            output = tok(row.output, add_special_tokens=False).input_ids + [tok.eos_token_id]
            assert ids == prompt + output
            assert labels == [IGNORE_INDEX] * len(prompt) + output
            trained = [t for t in labels if t != IGNORE_INDEX]
            assert tok.decode(trained) == row.output + tok.eos_token
        assert stats.tokens == sum(map(len, batch["input_ids"]))
        assert stats.label_tokens == sum(sum(t != IGNORE_INDEX for t in labels) for labels in batch["labels"])
        assert stats.max_length == max(map(len, batch["input_ids"]))
        assert stats.to_json()["mean_length"] == round(stats.tokens / 3, 2)


def test_chat_template_prompt_gets_no_extra_special_tokens(tok):
    batch = tokenize_batch(ROWS[:1], tok, *CHAT, max_len=4096)
    prompt_text = render_prompt(*CHAT, ROWS[0], tok)
    assert prompt_text.startswith("<|im_start|>user\n") and prompt_text.endswith("<|im_start|>assistant\n")
    prompt = tok(prompt_text, add_special_tokens=False).input_ids
    assert batch["input_ids"][0][: len(prompt)] == prompt
    assert batch["labels"][0][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert batch["labels"][0][len(prompt)] != IGNORE_INDEX


def test_max_source_len_keeps_the_start_of_the_prompt(tok):
    row = ROWS[0]
    prompt = tok(render_prompt(*PLAIN, row)).input_ids
    stats = SplitStats()
    batch = tokenize_batch([row], tok, *PLAIN, max_len=4096, max_source_len=5, stats=stats)
    assert len(prompt) > 5
    assert batch["input_ids"][0][:5] == prompt[:5]
    assert batch["labels"][0][:5] == [IGNORE_INDEX] * 5 and batch["labels"][0][5] != IGNORE_INDEX
    assert (stats.prompt_truncated, stats.output_truncated, stats.dropped) == (1, 0, 0)


def test_max_len_cuts_the_output_tail_and_drops_rows_without_output(tok):
    long_row, short_row = ROWS[0], ROWS[2]
    long_prompt = len(tok(render_prompt(*PLAIN, long_row)).input_ids)
    short_len = len(tok(render_prompt(*PLAIN, short_row)).input_ids) + len(tok("ok").input_ids) + 1
    assert short_len < long_prompt  # the short row fits whole below the long row's prompt
    max_len = long_prompt + 3
    stats = SplitStats()
    batch = tokenize_batch([long_row, short_row], tok, *PLAIN, max_len=max_len, stats=stats)
    assert [len(ids) for ids in batch["input_ids"]] == [max_len, short_len]
    output = tok(long_row.output, add_special_tokens=False).input_ids
    assert batch["labels"][0][long_prompt:] == output[:3]  # the tail (and eos) cut
    assert (stats.rows, stats.output_truncated, stats.dropped) == (2, 1, 0)

    stats = SplitStats()
    batch = tokenize_batch([long_row, short_row], tok, *PLAIN, max_len=long_prompt, stats=stats)
    assert len(batch["input_ids"]) == 1  # the long row has no room for any output token
    assert (stats.rows, stats.dropped) == (1, 1)


def test_batches_give_the_same_result_as_one_batch(tok):
    rows = ROWS * 5
    whole = tokenize_batch(rows, tok, *ALPACA, max_len=40)
    stats = SplitStats()
    batches = list(tokenize_rows(iter(rows), tok, *ALPACA, max_len=40, stats=stats, batch_rows=4))
    assert len(batches) == 4
    assert [ids for b in batches for ids in b["input_ids"]] == whole["input_ids"]
    assert [lab for b in batches for lab in b["labels"]] == whole["labels"]
    assert stats.rows + stats.dropped == len(rows)
