"""`triple-f1`: set-based F1 over `head_relation_tail` lines, the fault-triple write-up's recipe.

Parsing (the same for generations and gold outputs):
- split the text on "\\n" and strip each line's ends (spaces, tabs, a stray "\\r");
- keep a line only if it splits into exactly three parts on "_"; blank lines and lines with
  2 or 4+ parts are ignored;
- whitespace inside a line is kept as is, including around "_": heads and tails in the data
  contain spaces ("上海 别克"), and the reference recipe compares the stripped lines verbatim, so
  "发动机 _部件故障_水温高" is a different triple from "发动机_部件故障_水温高". No other
  normalisation either (full-width and half-width characters differ);
- the triples form a SET: a repeated triple (gold outputs do repeat some) counts once.

Per sample, with tp = |pred ∩ gold|: P = tp/|pred|, R = tp/|gold|, F1 = 2PR/(P+R). Edge cases:
- no predicted and no gold triples: P = R = F1 = 1 (nothing to find, nothing wrongly found);
- otherwise a 0/0 ratio is 0 (no predictions -> P = 0; no gold -> R = 0), and F1 = 0 when P + R = 0.

Summary: "f1", "precision", "recall" are macro means over samples ("f1" is the write-up's number);
"micro_precision", "micro_recall", "micro_f1" pool tp/|pred|/|gold| over all samples with the same
edge-case rules; "samples" is the number of samples. Zero samples give zeros. A multi-reference row
is scored against its first reference (a triple set has one gold answer).
"""

from __future__ import annotations

from worker.evaluation.metrics import Gold, MetricResult, check_pairs, mean, references_of, register_metric

HEADLINE = "f1"
STOP_ON_REPEATED_LINE = True
"""Small models loop on a triple; stopping on a repeated line saves generation to the token limit."""

Triple = tuple[str, str, str]


def parse_triples(text: str) -> set[Triple]:
    """The set of `(head, relation, tail)` in `text`, parsed as this module's docstring says."""
    triples: set[Triple] = set()
    for line in text.split("\n"):
        parts = line.strip().split("_")
        if len(parts) == 3:
            triples.add((parts[0], parts[1], parts[2]))
    return triples


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts, with the edge cases of the module docstring."""
    if n_pred == 0 and n_gold == 0:
        return 1.0, 1.0, 1.0
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@register_metric("triple-f1", headline=HEADLINE, stop_on_repeated_line=STOP_ON_REPEATED_LINE)
def score(predictions: list[str], references: list[Gold]) -> MetricResult:
    """Macro (per-sample) and micro precision/recall/F1 of predicted triple sets against gold."""
    check_pairs(predictions, references)
    per_sample: list[dict[str, float]] = []
    for prediction, reference in zip(predictions, references, strict=True):
        pred, gold = parse_triples(prediction), parse_triples(references_of(reference)[0])
        tp = len(pred & gold)
        precision, recall, f1 = _prf(tp, len(pred), len(gold))
        per_sample.append(
            {
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "tp": tp,
                "pred": len(pred),
                "gold": len(gold),
            }
        )
    if per_sample:
        micro = _prf(*(int(sum(s[k] for s in per_sample)) for k in ("tp", "pred", "gold")))
    else:
        micro = (0.0, 0.0, 0.0)
    summary = {
        "f1": mean([s["f1"] for s in per_sample]),
        "precision": mean([s["precision"] for s in per_sample]),
        "recall": mean([s["recall"] for s in per_sample]),
        "micro_precision": micro[0],
        "micro_recall": micro[1],
        "micro_f1": micro[2],
        "samples": len(per_sample),
    }
    return MetricResult(summary=summary, per_sample=per_sample)
