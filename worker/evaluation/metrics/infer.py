"""The default --metric of a dataset split, told from its gold outputs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from catalog.models import Dataset
from catalog.store import ArtifactStore

METRIC_SNIFF_ROWS = 20
"""How many gold outputs `infer_metric` looks at."""


def looks_like_triples(outputs: Sequence[str]) -> bool:
    """Whether most non-blank output lines are `head_relation_tail` triples."""
    lines = [line.strip() for text in outputs for line in text.split("\n") if line.strip()]
    return bool(lines) and sum(len(line.split("_")) == 3 for line in lines) >= 0.8 * len(lines)


def infer_metric(store: ArtifactStore, dataset: Dataset, split: str) -> str:
    """The default --metric: `triple-f1` when the split's gold outputs look like triples, else
    `bleu-rouge-zh` (free text)."""
    from datasets_prep.canonical import load_split

    outputs = [row.output for row in itertools.islice(load_split(store, dataset, split), METRIC_SNIFF_ROWS)]
    return "triple-f1" if looks_like_triples(outputs) else "bleu-rouge-zh"
