"""Repository functions of evaluations: register, look up, list, and gather the comparison table.

An evaluation is one model (an adapter, or the untuned base when `adapter_id` is NULL) on one
dataset version and split, with one metric. Rows are immutable: evaluating again adds a row, and
readers take the latest matching one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.errors import NotFound
from catalog.models import Adapter, BaseModel, Evaluation, PromptTemplate

EXTRA_METRIC_KEYS = ("tokens_per_s", "new_tokens", "samples")
"""Keys of `Evaluation.metrics` that are not the metric's own numbers."""


def register_evaluation(session: Session, evaluation: Evaluation) -> Evaluation:
    session.add(evaluation)
    session.flush()
    return evaluation


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    found = session.get(Evaluation, evaluation_id)
    if found is None:
        raise NotFound(f"no evaluation {evaluation_id}")
    return found


def latest_evaluation(
    session: Session,
    *,
    adapter_id: int | None,
    base_model_id: int,
    dataset_id: int,
    split: str,
    metric: str,
) -> Evaluation | None:
    """The newest evaluation of an adapter (or, with `adapter_id` None, of the untuned base)."""
    stmt = select(Evaluation).where(
        Evaluation.base_model_id == base_model_id,
        Evaluation.dataset_id == dataset_id,
        Evaluation.split == split,
        Evaluation.metric == metric,
    )
    if adapter_id is None:
        stmt = stmt.where(Evaluation.adapter_id.is_(None))
    else:
        stmt = stmt.where(Evaluation.adapter_id == adapter_id)
    return session.scalars(stmt.order_by(Evaluation.id.desc()).limit(1)).first()


def list_evaluations(
    session: Session,
    *,
    adapter_id: int | None = None,
    base_model_id: int | None = None,
    untuned: bool = False,
    dataset_id: int | None = None,
) -> Sequence[Evaluation]:
    """Evaluations, oldest first; `untuned` keeps only those of base models without adapter."""
    stmt = select(Evaluation).order_by(Evaluation.id)
    if adapter_id is not None:
        stmt = stmt.where(Evaluation.adapter_id == adapter_id)
    if untuned:
        stmt = stmt.where(Evaluation.adapter_id.is_(None))
    if base_model_id is not None:
        stmt = stmt.where(Evaluation.base_model_id == base_model_id)
    if dataset_id is not None:
        stmt = stmt.where(Evaluation.dataset_id == dataset_id)
    return session.scalars(stmt).all()


def metric_names(metrics: dict[str, Any], headline: str) -> list[str]:
    """The metric's keys in `metrics`: the headline first, then the others in their order."""
    keys = [k for k in metrics if k not in EXTRA_METRIC_KEYS and k != headline]
    return ([headline] if headline in metrics else []) + keys


def comparison_columns(
    session: Session,
    adapters: Sequence[Adapter],
    bases: Sequence[BaseModel],
    *,
    dataset_id: int,
    split: str,
    metric: str,
) -> list[dict[str, Any]]:
    """One column per untuned base, then per adapter, with the latest matching evaluation of each:
    training cost from the adapter row, inference cost and scores from the evaluation (None where
    there is no evaluation yet)."""
    columns = []
    for model in bases:
        ev = latest_evaluation(
            session,
            adapter_id=None,
            base_model_id=model.id,
            dataset_id=dataset_id,
            split=split,
            metric=metric,
        )
        columns.append(
            {
                "name": model.name,
                "kind": "base",
                "method": None,
                "base_model": model.name,
                "peak_training_memory_bytes": None,
                "trainable_params": 0,
                "total_params": model.parameter_count,
                "trainable_percent": 0.0,
                "train_seconds": None,
                **_evaluation_fields(session, ev),
            }
        )
    for a in adapters:
        ev = latest_evaluation(
            session, adapter_id=a.id, base_model_id=a.base_model_id, dataset_id=dataset_id, split=split,
            metric=metric,
        )  # fmt: skip
        columns.append(
            {
                "name": a.name,
                "kind": "adapter",
                "method": a.method,
                "base_model": a.base_model.name,
                "peak_training_memory_bytes": a.peak_memory_bytes,
                "trainable_params": a.trainable_params,
                "total_params": a.total_params,
                "trainable_percent": 100.0 * a.trainable_params / a.total_params if a.total_params else None,
                "train_seconds": a.train_seconds,
                **_evaluation_fields(session, ev),
            }
        )
    return columns


def _evaluation_fields(session: Session, ev: Evaluation | None) -> dict[str, Any]:
    if ev is None:
        return {
            "evaluation_id": None,
            "inference_memory_bytes": None,
            "metrics": None,
            "tokens_per_s": None,
            "test_seconds": None,
            "samples": None,
            "template": None,
            "generation": None,
            "job_id": None,
            "evaluated_at": None,
        }
    return {
        "evaluation_id": ev.id,
        "inference_memory_bytes": ev.peak_memory_bytes,
        "metrics": {k: v for k, v in ev.metrics.items() if k not in EXTRA_METRIC_KEYS},
        "tokens_per_s": ev.metrics.get("tokens_per_s"),
        "test_seconds": ev.seconds,
        "samples": ev.sample_count,
        "template": session.get_one(PromptTemplate, ev.template_id).ref,
        "generation": ev.generation,
        "job_id": ev.job_id,
        "evaluated_at": ev.created_at,
    }
