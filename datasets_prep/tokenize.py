"""Canonical rows -> `input_ids` + `labels`, with the prompt masked out of the loss (-100).

For each row: the prompt is the template rendered on the row and tokenised as the tokenizer does
by default (its special tokens included; a chat template already writes its own, so none are
added to it); the output is tokenised without special tokens and ends with eos. Truncation is
explicit and counted: `max_source_len` keeps the start of the prompt, `max_len` cuts the end of
the output, and a row left with no output token is dropped. Rows are tokenised in batches by the
fast (Rust) tokenizer.

    stats = SplitStats()
    for batch in tokenize_rows(rows, tokenizer, "format", "{instruction}{input}", max_len=1024, stats=stats):
        batch["input_ids"], batch["labels"]  # lists of lists of ints
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

from catalog.errors import InvalidInput
from datasets_prep.rows import Row
from datasets_prep.templates import render_prompt

IGNORE_INDEX = -100
"""The label of a token that is not trained on (PyTorch's cross-entropy ignore index)."""
BATCH_ROWS = 1000


@dataclass
class SplitStats:
    """What tokenising one split did; `rows + dropped` is the number of canonical rows."""

    rows: int = 0
    """Rows written."""
    dropped: int = 0
    """Rows left with no output token after truncation to `max_len`."""
    prompt_truncated: int = 0
    """Rows whose prompt was cut to `max_source_len`."""
    output_truncated: int = 0
    """Rows whose output was cut to fit `max_len` (its eos included)."""
    tokens: int = 0
    """Tokens in the written rows (prompt + output)."""
    label_tokens: int = 0
    """Tokens trained on (output tokens)."""
    max_length: int = 0
    """Longest written row, in tokens."""

    @property
    def mean_length(self) -> float:
        return self.tokens / self.rows if self.rows else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mean_length": round(self.mean_length, 2)}


def tokenize_rows(
    rows: Iterable[Row],
    tokenizer: Any,
    template_kind: str,
    template_body: str,
    *,
    max_len: int,
    max_source_len: int | None = None,
    stats: SplitStats | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[dict[str, list[list[int]]]]:
    """Yield batches `{"input_ids": [...], "labels": [...]}` of up to `batch_rows` rows each (dropped
    rows are left out), counting into `stats`."""
    stats = stats if stats is not None else SplitStats()
    it = iter(rows)
    while batch := list(islice(it, batch_rows)):
        yield tokenize_batch(
            batch,
            tokenizer,
            template_kind,
            template_body,
            max_len=max_len,
            max_source_len=max_source_len,
            stats=stats,
        )


def tokenize_batch(
    rows: Sequence[Row],
    tokenizer: Any,
    template_kind: str,
    template_body: str,
    *,
    max_len: int,
    max_source_len: int | None = None,
    stats: SplitStats | None = None,
) -> dict[str, list[list[int]]]:
    """Tokenise one batch of rows; see `tokenize_rows`."""
    stats = stats if stats is not None else SplitStats()
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InvalidInput("the tokenizer has no eos token: outputs could not be terminated")
    prompts = [render_prompt(template_kind, template_body, row, tokenizer) for row in rows]
    # A chat template writes its own special tokens (bos included), as apply_chat_template does.
    add_special = template_kind != "chat"
    prompt_ids = tokenizer(prompts, add_special_tokens=add_special, verbose=False)["input_ids"]
    output_ids = tokenizer([row.output for row in rows], add_special_tokens=False, verbose=False)["input_ids"]
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    for prompt, output in zip(prompt_ids, output_ids, strict=True):
        example = mask_example(
            prompt, [*output, eos], max_len=max_len, max_source_len=max_source_len, stats=stats
        )
        if example is not None:
            out["input_ids"].append(example[0])
            out["labels"].append(example[1])
    return out


def mask_example(
    prompt: list[int],
    output: list[int],
    *,
    max_len: int,
    max_source_len: int | None,
    stats: SplitStats,
) -> tuple[list[int], list[int]] | None:
    """Truncate and join one example: (input_ids, labels), or None (counted) if no output token fits."""
    if max_source_len is not None and len(prompt) > max_source_len:
        prompt = prompt[:max_source_len]
        stats.prompt_truncated += 1
    room = max_len - len(prompt)
    if room <= 0:
        stats.dropped += 1
        return None
    if len(output) > room:
        output = output[:room]
        stats.output_truncated += 1
    input_ids = [*prompt, *output]
    stats.rows += 1
    stats.tokens += len(input_ids)
    stats.label_tokens += len(output)
    stats.max_length = max(stats.max_length, len(input_ids))
    return input_ids, [IGNORE_INDEX] * len(prompt) + output
