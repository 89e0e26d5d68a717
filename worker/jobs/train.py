"""The `train` job: tokenise (or reuse the cached conversion), train with the chosen method,
write the artifact atomically, and register the adapter in the transaction that ends the job.

A re-delivered job (its worker died) finds its checkpoints in the job's work directory
(`ctx.workdir`, in the artifact store's root, so any worker sharing FT_ARTIFACTS can resume it; the
runner removes it once the job succeeds); the trainer continues from the last complete checkpoint,
so the step never goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from catalog import __version__
from catalog.adapters import register_adapter
from catalog.models import Adapter, BaseModel
from worker.jobs.convert import ensure_conversion
from worker.jobs.handlers import HANDLERS, Finish, JobCancelled, JobContext
from worker.spec import TrainSpec

if TYPE_CHECKING:
    from worker.models.loading import ParamCounts
    from worker.train.engine import TrainPaths, TrainResult


@dataclass
class Prepared:
    """What a train job needs before training, the same in the job process and in each rank."""

    spec: TrainSpec
    base: BaseModel
    base_dir: Path
    tokenizer: Any
    conversion: Any
    train_data: Any
    eval_data: Any
    paths: TrainPaths
    parent_dir: Path | None = None
    """`--from`: the parent adapter's artifact, verified against the sha256 pinned at submit."""


def prepare(ctx: JobContext) -> Prepared:
    """Resolve the spec, the base and the tokenised splits (converting once, cached after)."""
    from datasets_prep.convert import load_tokenized
    from worker.models.directories import model_dir, tokenizer_of
    from worker.train.engine import TrainPaths

    spec = TrainSpec.from_json(ctx.job.spec)
    cfg = spec.train
    with ctx.catalog.session() as s:
        base = s.get_one(BaseModel, spec.data.base_model_id)
    tokenizer = tokenizer_of(ctx.store, base)
    parent_dir = None
    if spec.parent is not None:
        from catalog.integrity import verify_artifact

        label = f"adapter {spec.parent.name} (--from)"
        parent_dir = verify_artifact(ctx.store, spec.parent.artifact_uri, spec.parent.sha256, label)
    conversion = ensure_conversion(ctx, spec.data, tokenizer)
    return Prepared(
        spec=spec,
        base=base,
        base_dir=model_dir(ctx.store, base),
        tokenizer=tokenizer,
        conversion=conversion,
        train_data=load_tokenized(ctx.store, conversion, "train"),
        eval_data=load_tokenized(ctx.store, conversion, cfg.eval_split) if cfg.eval_split else None,
        paths=TrainPaths(
            checkpoints=ctx.workdir / "checkpoints", tensorboard=ctx.settings.tensorboard_dir(ctx.job.id)
        ),
        parent_dir=parent_dir,
    )


def train_prepared(ctx: JobContext, prep: Prepared) -> tuple[Any, TrainResult, ParamCounts]:
    """Train in this process (one GPU, or one rank of a `--gpus N` job); progress to `ctx.report`."""
    from worker.train.engine import TrainHooks
    from worker.train.recipe import run_training

    cfg = prep.spec.train
    last_logged = [-1]

    def on_progress(progress: dict[str, Any]) -> None:
        ctx.report({"stage": "train", **progress})
        step = progress.get("step", 0)
        if step == progress.get("total") or step - last_logged[0] >= cfg.logging_steps:
            last_logged[0] = step
            ctx.log.info(
                "step %s/%s loss %.4f lr %.2e %.0f tok/s",
                step, progress.get("total"), progress.get("loss") or 0.0, progress.get("lr") or 0.0,
                progress.get("tokens_per_s") or 0.0,
            )  # fmt: skip

    hooks = TrainHooks(on_progress=on_progress, should_stop=ctx.cancelled, score=step_scorer(ctx, prep))
    return run_training(
        prep.base_dir, prep.train_data, prep.spec.registered(), prep.spec.method_config, cfg, prep.paths,
        hooks,
        eval_data=prep.eval_data, trust_remote_code=prep.base.trust_remote_code, parent=prep.parent_dir,
    )  # fmt: skip


def step_scorer(ctx: JobContext, prep: Prepared) -> Any:
    """`--eval-metric`'s hook (worker/train/scoring.py), or None without one."""
    cfg = prep.spec.train
    if cfg.eval_metric is None:
        return None
    from catalog.models import Dataset, PromptTemplate
    from datasets_prep.canonical import load_split
    from worker.methods.saving import save_artifact
    from worker.train.scoring import StepScorer, sample_rows

    with ctx.catalog.session() as s:
        dataset = s.get_one(Dataset, prep.spec.data.dataset_id)
        template = s.get_one(PromptTemplate, prep.spec.data.template_id)
        kind, body = template.kind, template.body
        rows = sample_rows(list(load_split(ctx.store, dataset, cfg.eval_split)), cfg.eval_rows, cfg.seed)

    def save(model: Any, directory: Path, card: dict[str, Any]) -> None:
        card = {"name": prep.spec.name, "base_model": prep.base.name, **card}
        save_artifact(model, prep.spec.method, directory, tokenizer=prep.tokenizer, card=card)

    conversion = prep.conversion
    return StepScorer(
        rows=rows, template_kind=kind, template_body=body, tokenizer=prep.tokenizer, metric=cfg.eval_metric,
        max_source_len=conversion.max_source_len or conversion.max_len, workdir=ctx.workdir, save=save,
        log=ctx.log,
    )  # fmt: skip


def keep_best(ctx: JobContext, staged: Path, result: TrainResult) -> None:
    """Put the best scored step's weights into the adapter (`best/`) unless the best is the last step."""
    import shutil

    from worker.train.scoring import BEST, read_best

    best = read_best(ctx.workdir)
    if best is not None and best["step"] != result.steps:
        shutil.copytree(ctx.workdir / BEST, staged / BEST)


def artifact_card(
    ctx: JobContext, prep: Prepared, result: TrainResult, counts: ParamCounts
) -> dict[str, Any]:
    """The adapter's card: hyper-parameters, metrics and where it came from (also its catalog row)."""
    spec, base, conversion = prep.spec, prep.base, prep.conversion
    saved = spec.to_json()
    hyper = {
        "method": saved["method_config"], "train": saved["train"],
        "max_len": conversion.max_len, "max_source_len": conversion.max_source_len,
    }  # fmt: skip
    metrics: dict[str, Any] = {
        "final_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "train_seconds": round(result.train_seconds, 2),
        "tokens_seen": result.tokens_seen,
        "tokens_per_s": round(result.tokens_seen / result.train_seconds, 1) if result.train_seconds else None,
        "peak_memory_bytes": result.peak_memory_bytes,
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "trainable_percent": round(counts.percent, 4),
        "steps": result.steps,
        "skipped_rows": result.skipped_rows,
        "resumed_from": result.resumed_from,
        "attempts": ctx.job.attempts,
        "gpus": spec.train.gpus,
        "memory_estimate_bytes": result.memory_estimate_bytes,
        "gradient_checkpointing": result.gradient_checkpointing,
    }
    if result.eval_metrics:
        from worker.train.scoring import read_best

        best = read_best(ctx.workdir)
        metrics["eval_metric"] = spec.train.eval_metric
        metrics["eval_metrics"] = {
            str(step): summary for step, summary in sorted(result.eval_metrics.items())
        }
        metrics["best_step"] = best["step"] if best else None
    return {
        "name": spec.name,
        "base_model": base.name,
        "base_model_origin": f"{base.architecture}, {base.source}: {base.origin or base.uri}",
        # a name other tools resolve (a hub id), never a path of this machine
        "base_model_id": base.origin if base.source == "hub" else None,
        "dataset": spec.dataset_ref,
        "template": spec.template_ref,
        "job": ctx.job.id,
        "parent": f"{spec.parent.name} (sha256 {spec.parent.sha256})" if spec.parent else None,
        "hyperparameters": hyper,
        "metrics": metrics,
        "ft_version": __version__,
    }


@HANDLERS.register("train")
def run_train(ctx: JobContext) -> Finish:
    from worker.methods.saving import save_artifact

    prep = prepare(ctx)
    spec, cfg, conversion = prep.spec, prep.spec.train, prep.conversion
    ctx.log.info(
        "training %s: --method %s on %s (%d rows%s), attempt %d%s%s",
        spec.name, spec.method, spec.dataset_ref, len(prep.train_data),
        f", --max-samples {cfg.max_samples}" if cfg.max_samples else "", ctx.job.attempts,
        f", {cfg.gpus} GPUs" if cfg.gpus > 1 else "", f", from {spec.parent.name}" if spec.parent else "",
    )  # fmt: skip
    with ctx.store.staging() as staged:
        if cfg.gpus > 1:  # one process per GPU (torchrun); rank 0 saves the artifact into `staged`
            from worker.jobs.launch import train_on_ranks

            result, counts = train_on_ranks(ctx, cfg.gpus, staged)
        else:
            model, result, counts = train_prepared(ctx, prep)
            if result.stopped:
                raise JobCancelled(f"job {ctx.job.id} stopped at step {result.steps}")
            ctx.report({"stage": "save", "step": result.steps, "total": result.total_steps})
            card = artifact_card(ctx, prep, result, counts)
            save_artifact(model, spec.method, staged, tokenizer=prep.tokenizer, card=card)
        keep_best(ctx, staged, result)  # either way, the best scored step's weights (--eval-metric)
        artifact = ctx.store.commit(staged, "adapters")
    ctx.log.info("saved %s (%d bytes, sha256 %s)", artifact.uri, artifact.size_bytes, artifact.sha256)
    card = artifact_card(ctx, prep, result, counts)
    hyper, metrics = card["hyperparameters"], card["metrics"]

    def finish(session: Session) -> dict[str, Any]:
        adapter = register_adapter(
            session,
            Adapter(
                name=spec.name,
                method=spec.method,
                base_model_id=spec.data.base_model_id,
                dataset_id=spec.data.dataset_id,
                template_id=spec.data.template_id,
                conversion_id=conversion.id,
                job_id=ctx.job.id,
                parent_id=spec.parent.adapter_id if spec.parent else None,
                hyperparameters=hyper,
                artifact_uri=artifact.uri,
                sha256=artifact.sha256,
                size_bytes=artifact.size_bytes,
                trainable_params=counts.trainable,
                total_params=counts.total,
                peak_memory_bytes=result.peak_memory_bytes,
                train_seconds=result.train_seconds,
                tokens_seen=result.tokens_seen,
                final_loss=result.final_loss,
                metrics=metrics,
                ft_version=__version__,
                created_by=ctx.job.submitted_by,
            ),
        )
        return {
            "adapter": adapter.name,
            "adapter_id": adapter.id,
            "artifact_uri": adapter.artifact_uri,
            "final_loss": result.final_loss,
            "steps": result.steps,
            "resumed_from": result.resumed_from,
        }

    return finish
