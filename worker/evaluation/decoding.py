"""How evaluation decodes: the settings an `eval` job records and the generation engine uses, validated
once, here (no torch: the CLI builds it at submit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from catalog.errors import InvalidInput

DEFAULT_BATCH_SIZE = 64
"""Prompts per batch and model: what the quality and speed runs used (16 decoded 4x slower on an H200)."""


@dataclass
class Decoding:
    """Decoding settings. The defaults are the evaluation defaults: greedy, 512 new tokens, 64 a batch."""

    max_new_tokens: int = 512
    """Most tokens generated per row; a row stops earlier at EOS or, for triple-f1, a repeated line."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Prompts per batch for each model: K models evaluated together (stacked LoRA adapters and the
    base) generate batch_size x K rows per batch. Lower it on out-of-memory errors. On a GPU the graph
    decoding loop batches as many prompts as the GPU's free memory holds instead."""
    sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Softmax temperature when sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability."""
    seed: int = 0
    """Seed of the sampler; generation does not disturb the global RNG state."""

    def __post_init__(self) -> None:
        _whole(self.max_new_tokens, "--max-new-tokens", minimum=1)
        _whole(self.batch_size, "--batch-size", minimum=1)
        _whole(self.seed, "--seed", minimum=0)
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, int | float)
            or not self.temperature > 0
        ):
            raise InvalidInput(f"--temperature must be greater than 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise InvalidInput(f"--top-p must be in (0, 1], got {self.top_p!r}")


def _whole(value: Any, flag: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{flag} must be a whole number, got {value!r}")
    if value < minimum:
        raise InvalidInput(f"{flag} must be at least {minimum}, got {value}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
