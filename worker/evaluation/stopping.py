"""Stopping criteria for batched generation: stop a row on a repeated line, stop everything on cancel,
and a criterion that never stops but reports how far a batch has decoded.

Small models loop: once they start repeating a line ("a_b_c\\n" over and over) they run to the token
limit. `RepeatedLineCriteria` ends a row as soon as it completes a line it already produced in the same
generation, and `cut_at_repeated_line` removes that duplicate (and anything after it) from the text.
Both use one rule, `line_key`: lines compare by their stripped text, and blank lines never count.

transformers calls a criterion after every decoding step with the whole `input_ids` and expects one
bool per row back, so the criterion keeps per-row state and decodes only the current (unfinished) line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers import StoppingCriteria

ProgressFn = Callable[[dict[str, Any]], None]
STEP_PROGRESS_EVERY = 16
"""`on_step` hears from a batch every this many decoding steps..."""
STEP_PROGRESS_SECONDS = 1.0
"""... or once this long has passed since it last did, whichever comes first (a big model on a CPU
takes seconds a step)."""


def line_key(line: str) -> str:
    """What two lines are compared by; an empty key (a blank line) is never a repeat."""
    return line.strip()


def cut_at_repeated_line(text: str) -> str:
    """`text` up to (not including) the first complete line that repeats an earlier line."""
    seen: set[str] = set()
    start = 0
    while (end := text.find("\n", start)) != -1:
        key = line_key(text[start:end])
        if key and key in seen:
            return text[:start]
        seen.add(key)
        start = end + 1
    return text


class _RowState:
    """One row's progress: the tokens of its unfinished tail and the lines it has completed."""

    __slots__ = ("tail", "skip", "seen", "done")

    def __init__(self) -> None:
        self.tail: list[int] = []
        """Tokens from the one holding the last newline seen so far (or from the first generated one)."""
        self.skip = 0
        """Characters of `decode(tail)` that belong to lines already checked (up to the last newline)."""
        self.seen: set[str] = set()
        self.done = False

    def feed(self, tokens: list[int], decode: Callable[[list[int]], str], eos: frozenset[int]) -> bool:
        if self.done:
            return True
        for i, token in enumerate(tokens):
            if token in eos:
                tokens, self.done = tokens[:i], True
                break
        if not tokens:
            return self.done
        self.tail.extend(tokens)
        text = decode(self.tail)
        last = text.rfind("\n")
        if last < self.skip:
            return self.done
        for line in text[self.skip : last].split("\n"):
            key = line_key(line)
            if key and key in self.seen:
                self.done = True
                return True
            self.seen.add(key)
        self._rebase(decode)
        return self.done

    def _rebase(self, decode: Callable[[list[int]], str]) -> None:
        """Drop the tokens of checked lines: keep the tail from the last token holding a newline."""
        for k in range(len(self.tail) - 1, -1, -1):
            text = decode(self.tail[k:])
            if "\n" in text:
                self.tail = self.tail[k:]
                self.skip = text.rfind("\n") + 1
                return
        self.tail, self.skip = [], 0  # pragma: no cover - a decoder that hides a newline it emitted


class RepeatedLineCriteria(StoppingCriteria):
    """Marks a row done once its generated text completes a line it already produced.

    Use one instance per `model.generate` call: it learns where the prompt ends on its first call
    (transformers calls it once per new token, starting with the first generated one).
    """

    def __init__(self, tokenizer: Any, eos_token_ids: Iterable[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids)
        self._seen_len: int | None = None
        self._rows: list[_RowState] = []

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        batch, length = input_ids.shape
        if self._seen_len is None:
            self._seen_len = length - 1
            self._rows = [_RowState() for _ in range(batch)]
        new = input_ids[:, self._seen_len :].tolist()
        self._seen_len = length
        done = [row.feed(tokens, self.decode, self.eos) for row, tokens in zip(self._rows, new, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def rows(self, batch: int) -> list[_RowState]:
        """Each row's state, for a caller that feeds the rows itself (worker/evaluation/graph_decoding.py)."""
        if not self._rows:
            self._rows = [_RowState() for _ in range(batch)]
        return self._rows

    @property
    def stopped_rows(self) -> list[bool]:
        """Which rows this criterion has finished (a repeated line or an EOS token)."""
        return [row.done for row in self._rows]


class CancelCriteria(StoppingCriteria):
    """Stops every row once `should_stop()` returns True; asks at most once per `interval_s`."""

    def __init__(self, should_stop: Callable[[], bool], interval_s: float = 1.0) -> None:
        self.should_stop = should_stop
        self.interval_s = interval_s
        self.cancelled = False
        self._last = time.monotonic()

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        now = time.monotonic()
        if not self.cancelled and now - self._last >= self.interval_s:
            self._last = now
            self.cancelled = bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)


class StepReport(StoppingCriteria):
    """Never stops a row: tells `report` how far the batch has decoded, every STEP_PROGRESS_EVERY steps
    or STEP_PROGRESS_SECONDS. The batch's tokens so far are its generated columns that are not padding
    (transformers pads a finished row), counted only when reporting."""

    def __init__(self, report: ProgressFn, session: Any, done: int, rows: int, total: int) -> None:
        super().__init__()
        self.report, self.session = report, session
        self.fixed = {"done": done, "total": total, "batch_rows": rows}
        self.prompt_len, self.pad_id, self.step = 0, 0, 0
        self._last = time.monotonic()

    def watching(self, prompt_len: int, pad_id: int) -> StepReport:
        self.prompt_len, self.pad_id = prompt_len, pad_id
        return self

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        self.at(self.step + 1, input_ids[:, self.prompt_len :])
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)

    def at(self, step: int, generated: torch.Tensor) -> None:
        """The batch has decoded `step` steps, `generated` (rows x steps) so far: report if it is time."""
        self.step = step
        now = time.monotonic()
        if self.step % STEP_PROGRESS_EVERY == 0 or now - self._last >= STEP_PROGRESS_SECONDS:
            self._last = now
            tokens = int((generated != self.pad_id).sum())
            rate = (self.session.new_tokens + tokens) / max(self.session.elapsed(), 1e-9)
            most = self.session.cfg.max_new_tokens
            self.report({**self.fixed, "batch_step": self.step, "max_new_tokens": most, "tokens_per_s": rate})
