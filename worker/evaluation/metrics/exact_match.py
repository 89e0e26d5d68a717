"""`exact-match`: a prediction scores 1 when it equals its reference (any of them, for a
multi-reference row) after stripping both ends."""

from __future__ import annotations

from worker.evaluation.metrics import Gold, MetricResult, check_pairs, mean, references_of, register_metric

HEADLINE = "exact_match"


@register_metric("exact-match", headline=HEADLINE)
def score(predictions: list[str], references: list[Gold]) -> MetricResult:
    """Per sample 1.0 if `pred.strip() == ref.strip()` for a reference, else 0.0; the summary
    "exact_match" is the mean."""
    check_pairs(predictions, references)
    per_sample = [
        {HEADLINE: float(any(p.strip() == ref.strip() for ref in references_of(r)))}
        for p, r in zip(predictions, references, strict=True)
    ]
    return MetricResult(summary={HEADLINE: mean([s[HEADLINE] for s in per_sample])}, per_sample=per_sample)
