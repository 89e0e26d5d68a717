"""The `eval` job: evaluate the spec's models on one dataset split (worker/evaluation/evaluator.py)
and register an `evaluations` row for each, with its predictions, in the transaction that ends the job."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy.orm import Session

from catalog.errors import InvalidInput
from catalog.evaluations import register_evaluation
from catalog.models import BaseModel, Dataset, Evaluation, PromptTemplate
from worker.jobs.handlers import HANDLERS, Finish, JobCancelled, JobContext
from worker.spec import EvalSpec


@HANDLERS.register("eval")
def run_eval(ctx: JobContext) -> Finish:
    from datasets_prep.canonical import load_split
    from worker.evaluation.evaluator import Evaluator, evaluate_all
    from worker.evaluation.generation import GenerationCancelled
    from worker.models.directories import model_dir, tokenizer_of

    spec = EvalSpec.from_json(ctx.job.spec)
    with ctx.catalog.session() as s:
        base = s.get_one(BaseModel, spec.base_model_id)
        dataset = s.get_one(Dataset, spec.dataset_id)
        templates = {t.template_id: s.get_one(PromptTemplate, t.template_id) for t in spec.targets}
    rows = list(itertools.islice(load_split(ctx.store, dataset, spec.split), spec.limit))
    if not rows:
        raise InvalidInput(f"dataset {dataset.ref} split {spec.split!r} has no rows to evaluate")
    ctx.log.info(
        "evaluating %d model(s) on %s:%s (%d rows) with %s",
        len(spec.targets), spec.dataset_ref, spec.split, len(rows), spec.metric,
    )  # fmt: skip
    evaluator = Evaluator(
        spec, tokenizer_of(ctx.store, base), rows, templates, ctx.store, ctx.log, ctx.report, ctx.cancelled
    )
    artifacts = {i: ctx.store.path(t.artifact_uri) for i, t in enumerate(spec.targets) if t.artifact_uri}
    # Loading a big base takes minutes: say so at once, with the job's size (then per batch, and within).
    ctx.report(
        {"stage": "load", "model": spec.model_name, "rows_done": 0, "rows_total": evaluator.rows_total}
    )
    try:
        outcomes, loads = evaluate_all(
            spec, evaluator, model_dir(ctx.store, base), artifacts, trust_remote_code=base.trust_remote_code
        )
    except GenerationCancelled:
        raise JobCancelled(f"job {ctx.job.id} cancelled while evaluating") from None
    headline = evaluator.metric.headline
    settings = {**spec.generation_settings(), "device": loads["device"], "dtype": loads["dtype"]}

    def finish(session: Session) -> dict[str, Any]:
        done = []
        for o in outcomes:
            metrics = {**o.summary, "tokens_per_s": round(o.tokens_per_s, 2), "new_tokens": o.new_tokens}
            ev = register_evaluation(
                session,
                Evaluation(
                    adapter_id=o.target.adapter_id, base_model_id=spec.base_model_id,
                    dataset_id=spec.dataset_id, split=spec.split, template_id=o.target.template_id,
                    metric=spec.metric, metrics=metrics,
                    generation={**settings, "truncated_prompts": o.truncated, "engine": o.engine},
                    sample_count=len(o.predictions), seconds=o.seconds, peak_memory_bytes=o.peak_memory_bytes,
                    predictions_uri=o.artifact.uri, predictions_sha256=o.artifact.sha256, job_id=ctx.job.id,
                    created_by=ctx.job.submitted_by,
                ),
            )  # fmt: skip
            done.append({"id": ev.id, "model": o.target.label, "adapter": o.target.adapter,
                         headline: o.summary.get(headline), "samples": len(o.predictions)})  # fmt: skip
        scores = ", ".join(f"{d['model']} {headline}={_number(d[headline])}" for d in done)
        return {
            "evaluation_ids": [d["id"] for d in done],
            "evaluations": done,
            "metric": spec.metric,
            "dataset": f"{spec.dataset_ref}:{spec.split}",
            "scores": scores,
            **loads,
        }

    return finish


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
