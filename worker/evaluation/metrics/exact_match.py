"""`exact-match`: a prediction scores 1 when it equals its reference after stripping both ends."""

from __future__ import annotations

from worker.evaluation.metrics import MetricResult, check_pairs, mean, register_metric

HEADLINE = "exact_match"


@register_metric("exact-match", headline=HEADLINE)
def score(predictions: list[str], references: list[str]) -> MetricResult:
    """Per sample 1.0 if `pred.strip() == ref.strip()` else 0.0; summary "exact_match" is the mean."""
    check_pairs(predictions, references)
    per_sample = [
        {HEADLINE: float(p.strip() == r.strip())} for p, r in zip(predictions, references, strict=True)
    ]
    return MetricResult(summary={HEADLINE: mean([s[HEADLINE] for s in per_sample])}, per_sample=per_sample)
