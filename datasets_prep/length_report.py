"""What `--max-len` / `--max-source-len` will do to a split's rows, said at submit, before any GPU time.

    report = length_report(session, store, spec, "train", tokenizer_for=lambda: tokenizer)
    report.line()            # "1,441 train rows at --max-len 2048: 11 prompts cut to 1536 tokens, ..."
    check_lengths(report)    # InvalidInput when most rows would be dropped, naming the flag to raise

A conversion already registered for the same request (same cache key) answers exactly and at once;
otherwise the rows are tokenised here exactly as the conversion will (datasets_prep.tokenize), on a
seeded sample of at most SAMPLE_ROWS rows, so a large dataset costs seconds, and the report says
it is an estimate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from catalog.conversions import find_conversion
from catalog.errors import InvalidInput
from catalog.models import Dataset, PromptTemplate
from catalog.store import ArtifactStore
from datasets_prep.canonical import load_split
from datasets_prep.spec import ConvertSpec
from datasets_prep.tokenize import IGNORE_INDEX, SplitStats, mask_example, tokenize_rows

SAMPLE_ROWS = 5000
"""Rows tokenised at submit when no conversion answers already (a seeded sample of larger splits)."""
REFUSE_SHARE = 0.5
"""Refuse a job whose settings take answer tokens from more than this share of its rows (dropped, or
the answer cut short): the answer is what it trains on. Prompts cut short are only reported."""


@dataclass
class LengthReport:
    split: str
    rows: int
    """Rows of the split."""
    examined: int
    """Rows tokenised to make the report (== rows when exact)."""
    stats: SplitStats
    max_len: int
    max_source_len: int | None
    exact: bool
    fits_p95: int | None = None
    """--max-len that keeps 95% of the examined rows whole (prompt + answer), when tokenised here."""

    def share(self, count: int) -> float:
        return count / self.examined if self.examined else 0.0

    def estimate(self, count: int) -> int:
        return count if self.exact else round(self.share(count) * self.rows)

    @property
    def dropped(self) -> int:
        return self.estimate(self.stats.dropped)

    def line(self) -> str:
        s = self.stats
        head = f"{self.rows:,} {self.split} rows at --max-len {self.max_len}"
        parts = []
        if s.dropped:
            parts.append(f"{self.dropped:,} dropped (no room for the answer)")
        if s.prompt_truncated:
            parts.append(f"{self.estimate(s.prompt_truncated):,} prompts cut to {self.max_source_len} tokens")
        if s.output_truncated:
            parts.append(f"{self.estimate(s.output_truncated):,} answers cut short")
        body = ", ".join(parts) if parts else "every row whole"
        how = "" if self.exact else f" (estimated from {self.examined:,} rows)"
        return f"{head}: {body}{how}"

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split, "rows": self.rows, "examined": self.examined, "exact": self.exact,
            "max_len": self.max_len, "max_source_len": self.max_source_len, "dropped": self.dropped,
            "prompt_truncated": self.estimate(self.stats.prompt_truncated),
            "output_truncated": self.estimate(self.stats.output_truncated), "fits_p95": self.fits_p95,
        }  # fmt: skip


def length_report(
    session: Session,
    store: ArtifactStore,
    spec: ConvertSpec,
    split: str,
    *,
    tokenizer_for: Callable[[], Any],
    sample_rows: int = SAMPLE_ROWS,
) -> LengthReport:
    """The report for `split` of the conversion `spec` describes (see the module docstring)."""
    dataset = session.get_one(Dataset, spec.dataset_id)
    total = dataset.split_counts.get(split, 0)
    cached = find_conversion(session, spec.cache_key)
    if cached is not None and split in (cached.stats or {}):
        known = cached.stats[split]
        stats = SplitStats(**{k: known[k] for k in SplitStats.__dataclass_fields__ if k in known})
        examined = stats.rows + stats.dropped
        return LengthReport(split, examined, examined, stats, spec.max_len, spec.max_source_len, exact=True)
    template = session.get_one(PromptTemplate, spec.template_id)
    rows = list(load_split(store, dataset, split))
    if len(rows) > sample_rows:
        rows = random.Random(0).sample(rows, sample_rows)
    tokenizer = tokenizer_for()
    stats, lengths = SplitStats(), []
    for batch in tokenize_rows(rows, tokenizer, template.kind, template.body, max_len=10**9):
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            cut = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
            lengths.append(len(ids))  # the row whole; then as the conversion will cut it
            mask_example(ids[:cut], ids[cut:], max_len=spec.max_len, max_source_len=spec.max_source_len,
                         stats=stats)  # fmt: skip
    p95 = sorted(lengths)[max(0, math.ceil(0.95 * len(lengths)) - 1)] if lengths else None
    return LengthReport(
        split, len(rows) if total == 0 else total, len(rows), stats, spec.max_len, spec.max_source_len,
        exact=len(rows) == total, fits_p95=p95,
    )  # fmt: skip


def check_lengths(report: LengthReport, flag: str = "--max-len") -> None:
    """InvalidInput when more than REFUSE_SHARE of the rows would lose answer tokens, saying what to
    raise."""
    hurt = report.stats.dropped + report.stats.output_truncated
    if report.share(hurt) <= REFUSE_SHARE:
        return
    fits = f" (95% of the rows fit whole in {report.fits_p95} tokens)" if report.fits_p95 else ""
    raise InvalidInput(
        f"{flag} {report.max_len} drops or cuts the answer of {report.estimate(hurt):,} of {report.rows:,} "
        f"{report.split} rows ({report.share(hurt):.0%}): raise {flag}{fits}, or lower --max-source-len"
    )
