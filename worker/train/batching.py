"""Batches for the trainer: length-grouped, padded, prompt-masked, and a pure function of
(seed, epoch), so that a resumed run sees exactly the batches the interrupted one would have.

Rows come as a `datasets.Dataset` with `input_ids` and `labels` (prompt positions already -100), one
example a row, as the conversion wrote them (already within --max-len). A row with no answer token
trains nothing and is dropped (counted in `Rows.skipped`). Batches gather rows of similar length
(within shuffled mega-batches, as HF's LengthGroupedSampler does) to waste little on padding; the
longest batch comes first so an out-of-memory error shows at step one rather than hours in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from catalog.errors import InvalidInput

IGNORE = -100
MEGABATCH = 32
"""Batches per mega-batch whose rows are sorted by length."""


@dataclass
class Rows:
    """Tokenised rows, each with at least one target token."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    targets: list[int]
    """Tokens whose loss counts, per row (labels after the first position that are not -100)."""
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def sample(self, n: int | None, seed: int) -> Rows:
        """`n` rows drawn with `seed`, in their original order (all of them when n is None or larger)."""
        if n is None or n >= len(self):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        pick = lambda column: [column[i] for i in keep]  # noqa: E731
        return Rows(pick(self.input_ids), pick(self.labels), pick(self.targets), self.skipped)


def load_rows(data: Any, max_len: int | None = None, *, what: str = "training data") -> Rows:
    """Read `input_ids`/`labels` columns from a datasets.Dataset (or a dict of lists) into memory, cut to
    `max_len` tokens when given (a conversion has cut them already)."""
    columns = getattr(data, "column_names", None) or list(data)
    for column in ("input_ids", "labels"):
        if column not in columns:
            raise InvalidInput(f"{what} has no {column!r} column: convert the dataset with a template first")
    rows = Rows([], [], [])
    for ids, labels in zip(data["input_ids"], data["labels"], strict=True):
        ids, labels = list(ids)[:max_len], list(labels)[:max_len]  # [:None] keeps all
        if len(ids) != len(labels):
            raise InvalidInput(f"{what}: a row has {len(ids)} input_ids but {len(labels)} labels")
        targets = sum(1 for t in labels[1:] if t != IGNORE)
        if targets == 0:
            rows.skipped += 1
            continue
        rows.input_ids.append(ids)
        rows.labels.append(labels)
        rows.targets.append(targets)
    if not rows.input_ids:
        raise InvalidInput(
            f"{what}: no row has answer tokens within --max-len ({rows.skipped} rows skipped): "
            "raise --max-len"
        )
    return rows


def plan_epoch(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of every micro-batch of `epoch`, length-grouped, deterministic in (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * MEGABATCH
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    biggest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]) * len(batches[b]))
    batches[0], batches[biggest] = batches[biggest], batches[0]
    return batches


class StepPlan:
    """Which micro-batches make up each optimizer step, across epochs."""

    def __init__(
        self, rows: Rows, batch_size: int, grad_accum: int, seed: int, epochs: int, max_steps: int | None
    ):
        self.rows, self.batch_size, self.grad_accum, self.seed = rows, batch_size, grad_accum, seed
        # Mega-batches are whole multiples of batch_size, so only the last batch of an epoch is short.
        self.batches_per_epoch = math.ceil(len(rows) / batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / grad_accum)
        total = epochs * self.steps_per_epoch
        self.total_steps = min(total, max_steps) if max_steps else total
        self._cache: tuple[int, list[list[int]]] | None = None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, max_tokens: int = 0, multiple_of: int = 1) -> list[list[int]]:
        """Row indices of the micro-batches of optimizer step `step` (0-based): `grad_accum` batches of
        `batch_size` rows, or, with `max_tokens`, the same rows regrouped by `by_token_budget`. Which rows
        make up a step never depends on `max_tokens`, so the update (and a resume) is the same."""
        epoch = self.epoch_of(step)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, plan_epoch(self.rows.lengths, self.batch_size, self.seed, epoch))
        k = step % self.steps_per_epoch
        batches = self._cache[1][k * self.grad_accum : (k + 1) * self.grad_accum]
        if not max_tokens:
            return batches
        return by_token_budget([i for b in batches for i in b], self.rows.lengths, max_tokens, multiple_of)


def by_token_budget(
    indices: list[int], lengths: list[int], budget: int, multiple_of: int = 1
) -> list[list[int]]:
    """`indices` as micro-batches of at most `budget` padded tokens each (rows x the width of the batch's
    longest row, rounded up to `multiple_of`), longest rows first; a row wider than the budget goes alone.

    A step of short rows then runs as one or two full forward passes instead of `grad_accum` small ones:
    a small model on a GPU is bound by kernel launches, not by arithmetic, at a few thousand tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in sorted(indices, key=lambda i: -lengths[i]):
        if current and (len(current) + 1) * width > budget:
            batches.append(current)
            current = []
        if not current:
            width = math.ceil(lengths[i] / multiple_of) * multiple_of
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(rows: Rows, indices: list[int], pad_id: int, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding) of some rows."""
    width = max(len(rows.input_ids[i]) for i in indices)
    width = math.ceil(width / multiple_of) * multiple_of
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for r, i in enumerate(indices):
        n = len(rows.input_ids[i])
        ids[r, :n] = torch.tensor(rows.input_ids[i])
        labels[r, :n] = torch.tensor(rows.labels[i])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
