"""What each page shows, gathered from the catalog with the same functions the CLI uses.

Every function takes an open session (the page is rendered inside it, so lazy relationships load)
and returns plain values for a template. Nothing here takes a file-system path from a request: logs,
curves and dataset rows are found from the job's or the dataset's catalog row."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from catalog.adapters import get_adapter, list_adapters
from catalog.base_models import list_base_models
from catalog.datasets import get_dataset, list_datasets
from catalog.errors import FtError, InvalidInput
from catalog.evaluations import list_evaluations
from catalog.jobs import get_job, list_jobs
from catalog.models import FINISHED_STATUSES, JOB_KINDS, JOB_STATUSES, Adapter, Dataset, Job, PromptTemplate
from catalog.pool_view import list_workers
from catalog.settings import Settings
from catalog.store import ArtifactStore
from catalog.templates import list_templates
from dashboard.svg import line_chart

PAGE_SIZE = 100
"""Rows per page of the queue and the adapter registry."""
LOG_TAIL_BYTES = 32 * 1024
"""How much of the end of a job's log the job page shows (and refreshes)."""
SAMPLE_ROWS = 5
"""Rows of each split shown on a dataset's page."""


def pool(session: Session) -> dict[str, Any]:
    """The pool as `ft workers list` sees it: workers (alive first), their GPUs and the job on each."""
    workers = list_workers(session)
    gpus = [g for w in workers if w.alive for g in w.gpus]
    return {
        "workers": workers,
        "gpus_total": len(gpus),
        "gpus_busy": sum(g.job_id is not None for g in gpus),
    }


@dataclass(frozen=True)
class QueueFilter:
    user: str | None = None
    status: str | None = None
    kind: str | None = None
    before: int | None = None

    @classmethod
    def parse(cls, params: Any) -> QueueFilter:
        """From the query string; an unknown status or kind is one clear error naming the parameter."""

        def value(key: str) -> str | None:
            return (params.get(key) or "").strip() or None

        status, kind, before = value("status"), value("kind"), value("before")
        if status is not None and status not in JOB_STATUSES:
            raise InvalidInput(f"?status= must be one of {', '.join(JOB_STATUSES)}, got {status!r}")
        if kind is not None and kind not in JOB_KINDS:
            raise InvalidInput(f"?kind= must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        if before is not None and not before.isdigit():
            raise InvalidInput(f"?before= must be a job id, got {before!r}")
        return cls(value("user"), status, kind, int(before) if before is not None else None)

    def query(self, **changes: Any) -> dict[str, Any]:
        """The filter as query parameters (for links), with `changes` applied; empty ones left out."""
        items = {
            "user": self.user,
            "status": self.status,
            "kind": self.kind,
            "before": self.before,
            **changes,
        }
        return {k: v for k, v in items.items() if v is not None}


def queue(session: Session, flt: QueueFilter, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of jobs, newest first, and why each queued one waits."""
    rows = list(
        list_jobs(
            session, user=flt.user, status=flt.status, kind=flt.kind, limit=page_size + 1, before=flt.before
        )
    )
    more = len(rows) > page_size
    rows = rows[:page_size]
    live_queues = {q for w in list_workers(session, include_stopped=False) if w.alive for q in w.queues}
    return {
        "jobs": rows,
        "waits": {j.id: waiting_reason(j, live_queues) for j in rows if j.status == "queued"},
        "filter": flt,
        "next_before": rows[-1].id if more and rows else None,
        "statuses": JOB_STATUSES,
        "kinds": JOB_KINDS,
    }


def waiting_reason(job: Job, live_queues: set[str]) -> str:
    if job.queue not in live_queues:
        return f"no live worker takes queue {job.queue!r}: start one with `ft worker -Q {job.queue}`"
    if job.attempts:
        return f"re-queued after attempt {job.attempts} of {job.max_attempts}"
    return f"waiting for a free slot on queue {job.queue!r} (priority {job.priority})"


def job_page(session: Session, settings: Settings, job_id: int) -> dict[str, Any]:
    job = get_job(session, job_id)
    return {"job": job, "finished": job.status in FINISHED_STATUSES, **job_live(job, settings)}


def job_live(job: Job, settings: Settings) -> dict[str, Any]:
    """The parts of a job page that refresh: its state, progress, log tail and curves."""
    return {"log_tail": log_tail(job, settings), "charts": charts(job, settings)}


def log_tail(job: Job, settings: Settings, limit: int = LOG_TAIL_BYTES) -> str | None:
    """The end of the job's log (the path recorded in its row), or None when it has none yet."""
    from worker.jobs.logs import log_path

    path = log_path(job, settings)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - limit))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    if size > limit and "\n" in text:
        text = "…\n" + text.split("\n", 1)[1]
    return text


def charts(job: Job, settings: Settings) -> list[str]:
    """The loss and eval-loss chart, the --eval-metric chart and the learning-rate chart of a training
    job (inline SVG), from the TensorBoard events it writes (the reader of `ft jobs plot`); empty before
    its first step."""
    if job.kind != "train":
        return []
    from worker.train.curves import CURVES, metric_tag, read_curves

    metric = metric_tag(job.spec)
    try:
        curves = read_curves(settings.tensorboard_dir(job.id), metric)
    except FtError:
        return []
    loss = line_chart(
        {CURVES[t]: curves.get(t, []) for t in ("train/loss", "eval/loss")}, title="loss", y_label="loss"
    )
    label = metric.removeprefix("eval/") if metric else ""
    scored = (
        line_chart({label: curves.get(metric, [])}, title=f"eval {label}", y_label=label) if metric else None
    )
    lr = line_chart({CURVES["train/lr"]: curves.get("train/lr", [])}, title="learning rate", y_label="lr")
    return [c for c in (loss, scored, lr) if c]


def adapters_page(session: Session, page: int, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    rows = list_adapters(session)
    pages = max(1, -(-len(rows) // page_size))
    if not 1 <= page <= pages:
        raise InvalidInput(f"?page= must be between 1 and {pages}, got {page}")
    shown = list(reversed(rows))[(page - 1) * page_size : page * page_size]  # newest first
    newest = rows[-1].dataset if rows else None
    default = f"{newest.ref}:test" if newest is not None and "test" in newest.split_counts else None
    return {
        "adapters": shown,
        "page": page,
        "pages": pages,
        "total": len(rows),
        "datasets": list_datasets(session),
        "default_split": default,  # the compare form's choice: the test split of the newest adapter's data
    }


def adapter_page(session: Session, name: str) -> dict[str, Any]:
    adapter = get_adapter(session, name)
    parent = session.get(Adapter, adapter.parent_id) if adapter.parent_id else None
    evaluations = [
        {
            "ev": ev,
            "dataset": session.get_one(Dataset, ev.dataset_id).ref,
            "template": session.get_one(PromptTemplate, ev.template_id).ref,
        }
        for ev in list_evaluations(session, adapter_id=adapter.id)
    ]
    return {"a": adapter, "parent": parent, "evaluations": evaluations}


def compare_page(session: Session, store: ArtifactStore, params: Any) -> dict[str, Any]:
    """The write-ups' table for the chosen adapters on the chosen split (`ft adapters compare`)."""
    from worker.evaluation.compare import comparison

    names = [n for n in params.getlist("adapter") if n.strip()]
    dataset = (params.get("dataset") or "").strip()
    base = params.get("base") in ("1", "on", "true")
    if not names or not dataset:
        raise InvalidInput(
            "choose at least one adapter (?adapter=) and a dataset split (?dataset=NAME:SPLIT)"
        )
    data = comparison(session, store, names, dataset=dataset, metric=params.get("metric") or None, base=base)
    return {"data": data, "rows": compare_rows(data)}


def compare_rows(data: dict[str, Any]) -> list[tuple[str, str, list[Any]]]:
    """(label, filter, one value per column) in the order of `ft adapters compare`."""
    cols = data["columns"]
    metric_rows = [(k, "number", [(c["metrics"] or {}).get(k) for c in cols]) for k in data["metric_keys"]]
    return [
        ("method", "", [c["method"] or "(untuned)" for c in cols]),
        ("peak training memory", "bytes", [c["peak_training_memory_bytes"] for c in cols]),
        ("trainable params", "count", [c["trainable_params"] for c in cols]),
        ("total params", "count", [c["total_params"] for c in cols]),
        ("trainable %", "number", [c["trainable_percent"] for c in cols]),
        ("inference memory", "bytes", [c["inference_memory_bytes"] for c in cols]),
        ("training time", "seconds", [c["train_seconds"] for c in cols]),
        *metric_rows,
        ("test time", "seconds", [c["test_seconds"] for c in cols]),
        ("tokens/s", "number", [c["tokens_per_s"] for c in cols]),
        ("samples", "number", [c["samples"] for c in cols]),
    ]


def datasets_page(session: Session) -> dict[str, Any]:
    return {"datasets": list_datasets(session, all_versions=True)}


def dataset_page(session: Session, store: ArtifactStore, name: str, version: int) -> dict[str, Any]:
    """One dataset version: its splits, validation report and the first rows of each split."""
    from datasets_prep.canonical import load_split

    dataset = get_dataset(session, f"{name}:{version}")
    samples: dict[str, list[Any]] = {}
    for split in dataset.split_counts:  # the splits the catalog knows, never one named by the request
        try:
            samples[split] = list(itertools.islice(load_split(store, dataset, split), SAMPLE_ROWS))
        except FtError:
            samples[split] = []
    return {"d": dataset, "samples": samples}


def models_page(session: Session) -> dict[str, Any]:
    return {"models": list_base_models(session)}


def templates_page(session: Session) -> dict[str, Any]:
    return {"templates": list_templates(session, all_versions=True)}
