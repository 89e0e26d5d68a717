"""`bleu-rouge-zh`: ChatGLM's ADGEN metrics (ptuning/main.py `compute_metrics`), so numbers compare.

Per (prediction, label) pair:
- ROUGE-1/2/L: the "f" of `rouge_chinese.Rouge().get_scores(' '.join(hyp), ' '.join(ref))`, where
  hyp = list(jieba.cut(prediction)) and ref = list(jieba.cut(label)) (jieba words);
- BLEU-4: `nltk` `sentence_bleu([list(label)], list(prediction), smoothing_function=method3)` on
  characters;
- each ×100 and rounded to 4 decimals, as ChatGLM does; the summary is the mean of each.
Keys: "rouge-1", "rouge-2", "rouge-l", "bleu-4".

Multi-reference rows (a list of labels): BLEU-4 is nltk's multi-reference `sentence_bleu([list(r) for
r in labels], ...)` (clipped counts against every reference, the closest reference length); each
ROUGE number is the best over the references. One label scores exactly as above.

Where ChatGLM would crash (rouge_chinese raises on an empty hypothesis or reference), this scores 0
on all four: an empty or whitespace-only prediction, or an empty or whitespace-only label, scores 0,
never NaN. jieba and nltk are imported and initialised on first use, with jieba's logging quietened.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from worker.evaluation.metrics import Gold, MetricResult, check_pairs, mean, references_of, register_metric

HEADLINE = "bleu-4"
KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


@functools.cache
def _tools() -> tuple[Any, Any, Any, Any]:
    """jieba (initialised, quiet), rouge_chinese.Rouge, nltk's sentence_bleu and smoothing method3."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba, Rouge, sentence_bleu, SmoothingFunction().method3


def score_pair(prediction: str, label: Gold) -> dict[str, float]:
    """The four numbers (×100, 4 decimals) for one prediction against its label or labels; zeros
    when the prediction is blank or every label is (a blank label among others is left out)."""
    labels = [ref for ref in references_of(label) if ref.strip()]
    if not prediction.strip() or not labels:
        return dict.fromkeys(KEYS, 0.0)
    jieba, rouge_cls, sentence_bleu, method3 = _tools()
    hypothesis = " ".join(jieba.cut(prediction))
    result = dict.fromkeys(("rouge-1", "rouge-2", "rouge-l"), 0.0)
    for ref in labels:
        rouge = rouge_cls().get_scores(hypothesis, " ".join(jieba.cut(ref)))[0]
        for key in result:
            result[key] = max(result[key], round(rouge[key]["f"] * 100, 4))
    bleu = sentence_bleu([list(ref) for ref in labels], list(prediction), smoothing_function=method3)
    result["bleu-4"] = round(bleu * 100, 4)
    return result


@register_metric("bleu-rouge-zh", headline=HEADLINE)
def score(predictions: list[str], references: list[Gold]) -> MetricResult:
    """Per-sample ROUGE-1/2/L F and character BLEU-4 (×100); the summary is their means."""
    check_pairs(predictions, references)
    per_sample = [score_pair(p, r) for p, r in zip(predictions, references, strict=True)]
    return MetricResult(summary={k: mean([s[k] for s in per_sample]) for k in KEYS}, per_sample=per_sample)
