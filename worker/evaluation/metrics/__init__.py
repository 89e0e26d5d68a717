"""Evaluation metrics, registered by name: `get_metric("triple-f1").score(predictions, references)`.

A reference is a string, or a list of strings for a multi-reference test row (`Row.gold`);
`bleu-rouge-zh` and `exact-match` score against all of them, `triple-f1` against the first.

Each metric lives in its own module of this package and registers one `score` function with
`register_metric`, declaring its headline key (the number `ft adapters compare` shows) and whether
generation for it should stop on a repeated line. Importing this package registers the built-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from catalog.errors import InvalidInput


@dataclass
class MetricResult:
    """What a metric returns: the headline numbers and one dict of numbers per sample."""

    summary: dict[str, float]
    """Aggregate numbers over all samples, e.g. {"f1": 0.54, "precision": ..., "samples": 50}."""
    per_sample: list[dict[str, float]] = field(default_factory=list)
    """One dict per (prediction, reference) pair, in input order."""


Gold = str | Sequence[str]
"""One sample's gold output: a string, or every reference of a multi-reference test row."""
ScoreFn = Callable[[list[str], list[Gold]], MetricResult]


@dataclass(frozen=True)
class Metric:
    """A registered metric: its name, its scoring function and what generation needs to know."""

    name: str
    score: ScoreFn
    headline: str
    """The key of `MetricResult.summary` that is the metric's one number (e.g. "f1", "bleu-4")."""
    stop_on_repeated_line: bool = False
    """Whether generation for this metric stops once the model repeats an output line."""


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, *, headline: str, stop_on_repeated_line: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Register the decorated `score(predictions, references)` function under `name`.

    Registering a name twice is a bug, so it raises ValueError rather than silently replacing.
    """

    def decorator(fn: ScoreFn) -> ScoreFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered (by {METRICS[name].score.__module__})")
        METRICS[name] = Metric(
            name=name, score=fn, headline=headline, stop_on_repeated_line=stop_on_repeated_line
        )
        return fn

    return decorator


def get_metric(name: str) -> Metric:
    """The metric registered as `name`; InvalidInput naming the known metrics otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        known = ", ".join(sorted(METRICS)) or "none"
        raise InvalidInput(f"unknown metric {name!r}; known metrics: {known}") from None


def references_of(gold: Gold) -> list[str]:
    """The references of one sample: `[gold]` for a string, else the list (never empty)."""
    refs = [gold] if isinstance(gold, str) else list(gold)
    if not refs:
        raise ValueError("a sample has an empty list of references")
    return refs


def check_pairs(predictions: Sequence[str], references: Sequence[Gold]) -> None:
    """Raise ValueError unless there is exactly one reference per prediction."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; need one each")


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values (a metric over zero samples reports zeros, not NaN)."""
    return sum(values) / len(values) if values else 0.0


# The built-in metrics register themselves on import (after the registry above exists).
from worker.evaluation.metrics import bleu_rouge_zh, exact_match, triple_f1  # noqa: E402, F401
