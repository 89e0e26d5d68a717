"""The `convert` job: tokenise a dataset version with a template for a base model's tokenizer.

The spec is a `datasets_prep.convert.ConvertSpec`. If an identical conversion (same cache key)
was registered meanwhile, the job reuses it; otherwise it builds the Arrow dataset into the
artifact store and registers the `conversions` row in the transaction that finishes the job.
`ensure_conversion` does the same for jobs that need tokenised data first (training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from catalog.conversions import find_conversion
from catalog.models import BaseModel, Conversion, Dataset, PromptTemplate
from datasets_prep.spec import ConvertSpec
from worker.jobs.handlers import HANDLERS, Finish, JobContext

if TYPE_CHECKING:
    from datasets_prep.convert import BuiltConversion


def cached_or_inputs(ctx: JobContext, spec: ConvertSpec) -> tuple[Conversion | None, Dataset, PromptTemplate]:
    """The registered conversion with `spec`'s cache key (or None), and the rows it is built from."""
    with ctx.catalog.session() as s:
        cached = find_conversion(s, spec.cache_key)
        return cached, s.get_one(Dataset, spec.dataset_id), s.get_one(PromptTemplate, spec.template_id)


def build_reporting(
    ctx: JobContext, spec: ConvertSpec, dataset: Dataset, template: PromptTemplate, tokenizer: Any,
    stage: str | None = None,
) -> BuiltConversion:  # fmt: skip
    """Build the Arrow dataset, reporting progress to the job and stopping if it is cancelled."""
    from datasets_prep.convert import build_conversion

    ctx.log.info(
        "tokenising %s with template %s for %s (max_len %d)",
        spec.dataset_ref, spec.template_ref, spec.model_name, spec.max_len,
    )  # fmt: skip

    def report(progress: dict[str, Any]) -> None:
        ctx.report({"stage": stage, **progress} if stage else progress)
        ctx.raise_if_cancelled()

    built = build_conversion(ctx.store, spec, dataset, template, tokenizer, report=report)
    ctx.log.info("built %s: %s", built.artifact.uri, built.stats)
    return built


def ensure_conversion(ctx: JobContext, spec: ConvertSpec, tokenizer: Any) -> Conversion:
    """The cached conversion of `spec`, built and registered now (its own transaction) if there is none."""
    from datasets_prep.convert import register_conversion

    cached, dataset, template = cached_or_inputs(ctx, spec)
    if cached is not None:
        ctx.log.info("using cached conversion %d (%s)", cached.id, cached.artifact_uri)
        return cached
    built = build_reporting(ctx, spec, dataset, template, tokenizer, stage="convert")
    with ctx.catalog.session() as s:
        return register_conversion(s, spec, built, job_id=ctx.job.id, user=ctx.job.submitted_by)


@HANDLERS.register("convert")
def run_convert(ctx: JobContext) -> Finish:
    from datasets_prep.convert import register_conversion
    from worker.models.directories import tokenizer_of

    spec = ConvertSpec.from_json(ctx.job.spec)
    cached, dataset, template = cached_or_inputs(ctx, spec)
    if cached is not None:
        ctx.log.info("conversion %d already has cache key %s; reusing it", cached.id, spec.cache_key)
        return _reuse(cached.id)
    with ctx.catalog.session() as s:
        base_model = s.get_one(BaseModel, spec.base_model_id)
    built = build_reporting(ctx, spec, dataset, template, tokenizer_of(ctx.store, base_model))

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
