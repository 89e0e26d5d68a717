"""The `convert` job: tokenise a dataset version with a template for a base model's tokenizer.

The spec is a `datasets_prep.convert.ConvertSpec`. If an identical conversion (same cache key)
was registered meanwhile, the job reuses it; otherwise it builds the Arrow dataset into the
artifact store and registers the `conversions` row in the transaction that finishes the job.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from catalog.models import BaseModel, Dataset, PromptTemplate
from worker.handlers import HANDLERS, Finish, JobContext


@HANDLERS.register("convert")
def run_convert(ctx: JobContext) -> Finish:
    from datasets_prep.convert import ConvertSpec, build_conversion, find_conversion, register_conversion
    from worker.base_models import load_tokenizer

    spec = ConvertSpec.from_json(ctx.job.spec)
    with ctx.catalog.session() as s:
        cached = find_conversion(s, spec.cache_key)
        if cached is not None:
            ctx.log.info("conversion %d already has cache key %s; reusing it", cached.id, spec.cache_key)
            return _reuse(cached.id)
        dataset = s.get_one(Dataset, spec.dataset_id)
        template = s.get_one(PromptTemplate, spec.template_id)
        base_model = s.get_one(BaseModel, spec.base_model_id)
    ctx.log.info(
        "converting %s with template %s for %s (max_len %d)",
        spec.dataset_ref,
        spec.template_ref,
        spec.model_name,
        spec.max_len,
    )
    tokenizer = load_tokenizer(ctx.store, base_model)

    def report(progress: dict[str, Any]) -> None:
        ctx.report(progress)
        ctx.raise_if_cancelled()

    built = build_conversion(ctx.store, spec, dataset, template, tokenizer, report=report)
    ctx.log.info("built %s: %s", built.artifact.uri, built.stats)

    def finish(session: Session) -> dict[str, Any]:
        # An identical conversion registered meanwhile by another job is returned instead.
        conversion = register_conversion(session, spec, built, job_id=ctx.job.id, user=ctx.job.submitted_by)
        return {
            "conversion_id": conversion.id,
            "artifact_uri": conversion.artifact_uri,
            "cache_hit": conversion.job_id != ctx.job.id,
            "stats": conversion.stats,
        }

    return finish


def _reuse(conversion_id: int) -> Finish:
    return lambda session: {"conversion_id": conversion_id, "cache_hit": True}
