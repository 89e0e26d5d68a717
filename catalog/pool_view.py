"""The pool as people see it: every worker with its GPUs and the job on each (`ft workers list`, the
dashboard), whether a live worker listens on a queue (`ft submit`'s warning), and pruning the rows of
workers long gone (`ft workers prune`). Registration, heartbeats and GPU claims are in `catalog.workers`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.errors import InvalidInput
from catalog.models import Job, Worker, utcnow
from catalog.workers import GONE_AFTER_SECONDS, USAGE_KEYS, GpuNeed


@dataclass(frozen=True)
class GpuView:
    """One GPU of a worker as `ft workers list` shows it; job fields are None when it is free."""

    index: int
    model: str
    gpu_class: str
    memory_bytes: int
    job_id: int | None = None
    job_kind: str | None = None
    submitted_by: str | None = None
    progress: dict[str, Any] | None = None
    utilization: int | None = None
    """Percent of the last sample period the GPU was busy (NVML), from the last heartbeat; None
    where NVML has no reading (declared GPUs, no driver) or the worker is not alive."""
    memory_used_bytes: int | None = None
    """Device memory in use by every process on the GPU (NVML), from the last heartbeat."""


@dataclass(frozen=True)
class WorkerView:
    """One worker: `state` is `alive`, `gone` (no heartbeat for `GONE_AFTER_SECONDS`) or `stopped`."""

    id: int
    name: str
    host: str
    pid: int
    queues: list[str]
    state: str
    started_at: dt.datetime
    last_seen: dt.datetime
    stopped_at: dt.datetime | None
    gpus: list[GpuView] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["alive"] = self.alive
        for gpu in out["gpus"]:
            gpu["class"] = gpu.pop("gpu_class")
        return out


def list_workers(
    session: Session,
    *,
    now: dt.datetime | None = None,
    gone_after: float = GONE_AFTER_SECONDS,
    include_stopped: bool = True,
) -> list[WorkerView]:
    """Every worker, alive ones first (then by name), with its GPUs and the job on each (with the job's
    kind, submitter and progress). A gone or stopped worker's GPUs are shown free."""
    now = now or utcnow()
    query = select(Worker)
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None))
    workers = list(session.scalars(query))
    job_ids = {g["job_id"] for w in workers for g in w.gpus if g["job_id"] is not None}
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    views = []
    for w in workers:
        if w.stopped_at is not None:
            state = "stopped"
        elif (now - w.last_seen).total_seconds() > gone_after:
            state = "gone"
        else:
            state = "alive"
        views.append(
            WorkerView(
                id=w.id,
                name=w.name,
                host=w.host,
                pid=w.pid,
                queues=list(w.queues),
                state=state,
                started_at=w.started_at,
                last_seen=w.last_seen,
                stopped_at=w.stopped_at,
                gpus=[_gpu_view(g, jobs.get(g["job_id"]), state == "alive") for g in w.gpus],
            )
        )
    views.sort(key=lambda v: (v.state != "alive", v.name))
    return views


def prune_workers(
    session: Session, older_than: float, *, now: dt.datetime | None = None, remove: bool = True
) -> list[str]:
    """Remove the rows of workers that stopped, or went (no heartbeat), more than `older_than`
    seconds ago (with `remove` false, only find them); returns their names. A live worker is never
    removed, and a gone one only once it has been gone `GONE_AFTER_SECONDS` (so a worker that is merely
    slow to heartbeat keeps its row). A job names its worker in its own row (`lease_owner`), so
    nothing refers to these rows."""
    if older_than < 0:
        raise InvalidInput(f"a worker's age must be 0 or more seconds, not {older_than:g}")
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=older_than)
    gone_cutoff = now - dt.timedelta(seconds=max(older_than, GONE_AFTER_SECONDS))
    query = select(Worker).where(
        ((Worker.stopped_at.is_not(None)) & (Worker.stopped_at <= cutoff))
        | ((Worker.stopped_at.is_(None)) & (Worker.last_seen < gone_cutoff))
    )
    names = []
    for w in list(session.scalars(query)):
        names.append(w.name)
        if remove:
            session.delete(w)
    return sorted(names)


def listening(session: Session, queue: str, gpus: int = 1, need: GpuNeed | None = None) -> bool:
    """Whether a live worker takes `queue` now and can run a job of `gpus` GPUs (it has that many, or
    none: then the job's processes run on its CPU), or of `need` (that many GPUs that fit it; a CPU
    worker never fits a need for a kind of GPU); else a job sent there waits."""
    for w in list_workers(session, include_stopped=False):
        if not (w.alive and queue in w.queues):
            continue
        if need is not None and need.picky:
            fitting = [g for g in w.gpus if need.fits({"class": g.gpu_class, "memory_bytes": g.memory_bytes})]
            if len(fitting) >= need.count:
                return True
        elif gpus <= 1 or not w.gpus or len(w.gpus) >= gpus:
            return True
    return False


def _gpu_view(gpu: Mapping[str, Any], job: Job | None, alive: bool) -> GpuView:
    base = dict(
        index=gpu["index"], model=gpu["model"], gpu_class=gpu["class"], memory_bytes=gpu["memory_bytes"]
    )
    if alive:  # a gone or stopped worker's last readings say nothing about now
        base.update({k: gpu.get(k) for k in USAGE_KEYS})
    if not alive or job is None or job.status != "running":
        return GpuView(**base)
    return GpuView(
        **base,
        job_id=job.id,
        job_kind=job.kind,
        submitted_by=job.submitted_by,
        progress=dict(job.progress or {}),
    )
