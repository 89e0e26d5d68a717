"""Scoring a model while it trains (`ft submit train --eval-metric M --eval-split S`).

At each evaluation step (every --eval-steps and the last) the train loop calls a `StepScorer`: it
generates for a seeded sample of --eval-rows rows of the split, rendered with the job's template and
cut to the job's --max-source-len (as an `eval` job renders them), with the evaluation's default
decoding, and scores them with the metric. When the headline score beats the best so far (every
registered metric is higher-is-better; a tie keeps the earlier step), the model's weights at that step
are saved as an artifact of the method's format into the job's work directory, `best/` (written
aside, then renamed over the old one; its `best.json` holds the step and the summary), so that a
resumed job keeps comparing against it. The train job puts `best/` into the adapter when the best step
is not the last one (`ft adapters export NAME DEST --checkpoint best`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasets_prep.rows import Row
from worker.evaluation.decoding import Decoding
from worker.evaluation.metrics import get_metric

BEST = "best"
"""The directory, in the job's work directory and in the adapter, of the best step's weights."""
BEST_JSON = "best.json"

SaveFn = Callable[[Any, Path, dict[str, Any]], None]
"""save(model, directory, card): write the model's trained weights as the method's artifact."""


def sample_rows(rows: Sequence[Row], k: int, seed: int) -> list[Row]:
    """`k` of `rows` drawn with `seed`, in their split order (all of them when there are no more)."""
    if len(rows) <= k:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), k))
    return [rows[i] for i in keep]


def read_best(workdir: Path) -> dict[str, Any] | None:
    """{"step", "score", "summary"} of the best step kept in `workdir`, or None. A job killed between
    the two renames of `_keep` left only `best.old`, which is put back."""
    final, old = workdir / BEST, workdir / (BEST + ".old")
    if not (final / BEST_JSON).is_file() and (old / BEST_JSON).is_file():
        shutil.rmtree(final, ignore_errors=True)
        old.rename(final)
    path = final / BEST_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class StepScorer:
    """The train loop's `score` hook (worker/train/engine.py TrainHooks); see the module docstring."""

    def __init__(
        self,
        *,
        rows: Sequence[Row],
        template_kind: str,
        template_body: str,
        tokenizer: Any,
        metric: str,
        max_source_len: int,
        workdir: Path,
        save: SaveFn,
        log: logging.Logger,
        decoding: Decoding | None = None,
    ) -> None:
        from datasets_prep.templates import render_prompt
        from worker.evaluation.evaluator import truncate_prompt

        self.metric = get_metric(metric)
        self.tokenizer, self.workdir, self.save, self.log = tokenizer, workdir, save, log
        self.decoding = decoding or Decoding()
        self.special = template_kind != "chat"  # a chat template writes its own special tokens
        rendered = [render_prompt(template_kind, template_body, r, tokenizer) for r in rows]
        self.prompts = [truncate_prompt(tokenizer, p, max_source_len, self.special)[0] for p in rendered]
        self.gold = [r.gold for r in rows]

    def __call__(self, model: Any, step: int) -> dict[str, float]:
        from worker.evaluation.generation import GenerationConfig, generate

        cfg = GenerationConfig.of(self.decoding, stop_on_repeated_line=self.metric.stop_on_repeated_line)
        result = generate(model, self.tokenizer, self.prompts, cfg, add_special_tokens=self.special)
        summary = self.metric.score(result.texts, self.gold).summary
        score = float(summary[self.metric.headline])
        score = score if math.isfinite(score) else -math.inf  # a NaN never pins "best"
        best = read_best(self.workdir)
        kept = best is None or score > best["score"]
        if kept:
            self._keep(model, {"step": step, "score": score, "summary": summary})
        self.log.info(
            "step %d: %s=%.4f on %d rows (%.1f s, %.0f tok/s)%s",
            step, self.metric.headline, score, len(self.prompts), result.seconds, result.tokens_per_s,
            ", the best so far: kept" if kept else f"; the best is step {best['step']} ({best['score']:.4f})",
        )  # fmt: skip
        return summary

    def _keep(self, model: Any, best: dict[str, Any]) -> None:
        final, tmp, old = (self.workdir / name for name in (BEST, BEST + ".tmp", BEST + ".old"))
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        self.save(model, tmp, {"checkpoint": "best", "step": best["step"], "metrics": best["summary"]})
        (tmp / BEST_JSON).write_text(json.dumps(best), encoding="utf-8")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
