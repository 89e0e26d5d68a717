"""The pool's workers: registration, heartbeat, stop, and which job runs on which GPU.

What the pool looks like to people (`ft workers list`, pruning, whether anyone listens on a queue) is
in `catalog.pool_view`.

A worker (`ft worker`) registers itself with its queues and GPUs, heartbeats every
`HEARTBEAT_SECONDS`, and is marked stopped on a clean exit. A worker not heard from for
`GONE_AFTER_SECONDS` is shown as gone and its GPUs as free (it may have been killed, or its host lost).

Each GPU entry in `workers.gpus` is {"index", "model", "class", "memory_bytes", "job_id"} (and
"claimed_at" once claimed). A job process claims its GPUs (one, or a `--gpus N` job's N together,
`claim_gpus`) when it starts a job and frees them at the end; the heartbeat frees GPUs whose job is no
longer running on this worker (a job process killed before it could free its GPU). Every change to
`gpus` first takes the row's write lock (a no-op UPDATE), so that two job processes claiming at once
on SQLite or PostgreSQL never overwrite each other's claim.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from catalog.errors import NotFound
from catalog.models import Job, Worker, utcnow

HEARTBEAT_SECONDS = 10.0
"""How often a worker writes its `last_seen`."""
GONE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
"""A worker whose `last_seen` is older than this is shown as gone, its GPUs free."""

GPU_KEYS = ("index", "model", "class", "memory_bytes")
USAGE_KEYS = ("utilization", "memory_used_bytes")
CLAIM_LOCK_KEY = 0x66745F67707573
"""PostgreSQL advisory lock that serialises GPU claims across workers (so a per-user cap holds)."""


def register_worker(
    session: Session,
    name: str,
    host: str,
    pid: int,
    queues: Sequence[str],
    gpus: Sequence[Mapping[str, Any]],
    worker_id: int | None = None,
) -> Worker:
    """Add the worker `name` (or take over the row of an earlier worker of that name): started now,
    not stopped, all its GPUs free. `gpus` are mappings with index, model, class and memory_bytes.
    `worker_id` gives a new row that id (a worker whose row was pruned while it was away comes back
    under the id its job processes know)."""
    entries = [{**{k: gpu[k] for k in GPU_KEYS}, "job_id": None} for gpu in gpus]
    indices = [e["index"] for e in entries]
    if len(set(indices)) != len(indices):
        raise ValueError(f"GPU indices must be distinct, got {indices}")
    now = utcnow()
    worker = session.scalars(select(Worker).where(Worker.name == name)).first()
    if worker is None:
        worker = Worker(name=name, id=worker_id)
        session.add(worker)
    worker.host, worker.pid, worker.queues, worker.gpus = host, pid, list(queues), entries
    worker.started_at, worker.last_seen, worker.stopped_at = now, now, None
    session.flush()
    return worker


def heartbeat(
    session: Session,
    worker_id: int,
    *,
    now: dt.datetime | None = None,
    usage: Mapping[int, Mapping[str, int]] | None = None,
) -> None:
    """The worker is alive now; GPUs whose job no longer runs on this worker are freed. `usage` maps a
    GPU index to its NVML reading ({"utilization": %, "memory_used_bytes": n}, worker.jobs.gpus)."""
    worker = _locked(session, worker_id)
    now = now or utcnow()
    worker.last_seen = now
    if usage:
        read = {i: {k: reading.get(k) for k in USAGE_KEYS} for i, reading in usage.items()}
        worker.gpus = [{**g, **read.get(g["index"], {})} for g in worker.gpus]
    held = {g["job_id"] for g in worker.gpus if g["job_id"] is not None}
    if not held:
        return
    prefix = f"{worker.name}:"  # lease owners of this worker's job processes (worker.jobs.requests)
    running = {
        job_id
        for job_id, owner in session.execute(
            select(Job.id, Job.lease_owner).where(Job.id.in_(held), Job.status == "running")
        )
        if owner is not None and owner.startswith(prefix)
    }
    grace = dt.timedelta(seconds=CLAIM_GRACE_SECONDS)
    keep = running | {g["job_id"] for g in worker.gpus if _claimed_since(g, now) < grace}  # about to run
    if held - keep:
        worker.gpus = [
            g if g["job_id"] in keep else {**g, "job_id": None, "claimed_at": None} for g in worker.gpus
        ]


def mark_stopped(session: Session, worker_id: int) -> None:
    """The worker stopped cleanly: it is shown as stopped, its GPUs free."""
    worker = _locked(session, worker_id)
    now = utcnow()
    worker.stopped_at, worker.last_seen = now, now
    worker.gpus = [{**g, "job_id": None} for g in worker.gpus]


def claim_gpu(
    session: Session, worker_id: int, job_id: int, index: int | None = None, *, take_over: bool = False
) -> int | None:
    """Record that job `job_id` runs on one of the worker's GPUs; returns that GPU's index, or None
    when none is free. With `index`, only that GPU is claimed. A GPU is free when it holds no job or
    its job is no longer running; `take_over` claims `index` whatever it holds (the caller owns that
    GPU, e.g. its pool slot, and knows the job recorded there is dead)."""
    worker = _locked(session, worker_id)
    gpus = worker.gpus
    candidates = [g for g in gpus if index is None or g["index"] == index]
    if index is not None and not candidates:
        raise NotFound(f"worker {worker.name} has no GPU {index}")
    held = {g["job_id"] for g in candidates if g["job_id"] is not None}
    running = set(session.scalars(select(Job.id).where(Job.id.in_(held), Job.status == "running")))
    for gpu in candidates:
        if take_over or gpu["job_id"] is None or gpu["job_id"] not in running or gpu["job_id"] == job_id:
            chosen = gpu["index"]
            claimed = {"job_id": job_id, "claimed_at": None}  # claimed once running: no grace needed
            worker.gpus = [{**g, **claimed} if g["index"] == chosen else g for g in gpus]
            return chosen
    return None


CLAIM_GRACE_SECONDS = 60.0
"""A GPU claimed for a job that is not running yet (its process is between the GPU claim and the
lease claim) stays held this long; after that the claim is stale and the GPU free."""


@dataclass(frozen=True)
class GpuNeed:
    """What a job asks of the GPUs it runs on: how many (a gang, all on one worker), of which class
    (`h100-80gb`) or at least how much memory each, and the per-user cap it counts against."""

    count: int = 1
    gpu_class: str | None = None
    min_memory_bytes: int | None = None
    user: str | None = None
    user_cap: int | None = None
    """At most this many GPUs of the pool held at once by `user`'s jobs (FT_MAX_GPUS_PER_USER)."""

    def fits(self, gpu: Mapping[str, Any]) -> bool:
        return (self.gpu_class is None or gpu["class"] == self.gpu_class) and (
            self.min_memory_bytes is None or gpu["memory_bytes"] >= self.min_memory_bytes
        )

    @property
    def picky(self) -> bool:
        return self.gpu_class is not None or self.min_memory_bytes is not None

    def describe(self) -> str:
        kind = " ".join(
            part
            for part in (
                self.gpu_class and f"of class {self.gpu_class}",
                self.min_memory_bytes and f"with at least {self.min_memory_bytes / (1 << 30):.0f} GiB",
            )
            if part
        )
        return f"{self.count} GPU{'s' if self.count > 1 else ''}" + (f" {kind}" if kind else "")


def claim_gpus(
    session: Session,
    worker_id: int,
    job_id: int,
    count: int,
    *,
    prefer: int | None = None,
    now: dt.datetime | None = None,
) -> list[int] | None:
    """Claim `count` free GPUs of the worker for job `job_id`, all together or none (a gang: a job that
    waits for GPUs never holds some of them meanwhile). `prefer` (the claiming process's own GPU) comes
    first when free. Returns the GPU indexes (ascending), or None when fewer than `count` are free. A GPU
    is free when it holds no job, or its job is neither running nor claimed in the last
    CLAIM_GRACE_SECONDS."""
    got = claim_for(session, worker_id, job_id, GpuNeed(count), prefer=prefer, now=now)
    return got if isinstance(got, list) else None


def claim_for(
    session: Session,
    worker_id: int,
    job_id: int,
    need: GpuNeed,
    *,
    prefer: int | None = None,
    now: dt.datetime | None = None,
) -> list[int] | str:
    """`claim_gpus` for a `GpuNeed`: the claimed GPU indexes, or why not (the waiting reason `ft jobs
    list` shows): this worker has no GPUs that fit, the user's cap is reached, or too few are free. The
    cap is counted and the GPUs claimed in one transaction that no other claim interleaves with."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":  # SQLite: the worker's row lock below is global
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK_KEY})
    worker = _locked(session, worker_id)
    gpus = worker.gpus
    fitting = [g for g in gpus if need.fits(g)]
    if len(fitting) < need.count:
        have = ", ".join(sorted({g["class"] for g in gpus})) or "no GPUs"
        return f"needs {need.describe()}; worker {worker.name} has {len(gpus)} ({have})"
    if need.user_cap is not None and need.user is not None:
        held = gpus_held_by(session, need.user, job_id, now)
        if held + need.count > need.user_cap:
            return f"{need.user} holds {held} GPU(s) of the pool; FT_MAX_GPUS_PER_USER is {need.user_cap}"
    busy = _busy_gpus(session, gpus, job_id, now)
    free = [g["index"] for g in fitting if g["index"] not in busy]
    if len(free) < need.count:
        return f"waiting for {need.describe().replace('GPU', 'free GPU', 1)} on worker {worker.name}"
    if prefer in free:
        free.remove(prefer)
        free.insert(0, prefer)
    chosen = set(free[: need.count])
    stamp = now.isoformat()
    worker.gpus = [{**g, "job_id": job_id, "claimed_at": stamp} if g["index"] in chosen else g for g in gpus]
    return sorted(chosen)


def gpus_held_by(session: Session, user: str, except_job: int, now: dt.datetime) -> int:
    """GPUs of live workers held by `user`'s jobs (running, or claimed in the last CLAIM_GRACE_SECONDS)."""
    held = 0
    seen_since = now - dt.timedelta(seconds=GONE_AFTER_SECONDS)
    live = select(Worker).where(Worker.stopped_at.is_(None), Worker.last_seen >= seen_since)
    for worker in session.scalars(live):
        busy = _busy_gpus(session, worker.gpus, except_job, now)
        jobs = {g["job_id"] for g in worker.gpus if g["index"] in busy}
        users = dict(session.execute(select(Job.id, Job.submitted_by).where(Job.id.in_(jobs))).all())
        held += sum(1 for g in worker.gpus if g["index"] in busy and users.get(g["job_id"]) == user)
    return held


def gang_gpus(session: Session, worker_id: int) -> set[int]:
    """This worker's GPUs held by a running job that holds more than one of them (`--gpus N`)."""
    gpus = get_worker(session, worker_id).gpus
    counts: dict[int, int] = {}
    for g in gpus:
        if g["job_id"] is not None:
            counts[g["job_id"]] = counts.get(g["job_id"], 0) + 1
    gangs = {j for j, n in counts.items() if n > 1}
    if not gangs:
        return set()
    alive = set(
        session.scalars(select(Job.id).where(Job.id.in_(gangs), Job.status.in_(("queued", "running"))))
    )
    return {g["index"] for g in gpus if g["job_id"] in alive}


def _busy_gpus(
    session: Session, gpus: Sequence[Mapping[str, Any]], job_id: int, now: dt.datetime
) -> set[int]:
    held = {g["job_id"] for g in gpus if g["job_id"] is not None and g["job_id"] != job_id}
    if not held:
        return set()
    status = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(held))).all())
    grace = dt.timedelta(seconds=CLAIM_GRACE_SECONDS)
    busy = set()
    for g in gpus:
        if g["job_id"] is None or g["job_id"] == job_id:
            continue
        state = status.get(g["job_id"])
        if state == "running" or (state == "queued" and _claimed_since(g, now) < grace):
            busy.add(g["index"])
    return busy


def _claimed_since(gpu: Mapping[str, Any], now: dt.datetime) -> dt.timedelta:
    stamp = gpu.get("claimed_at")
    if not stamp:
        return dt.timedelta.max
    then = dt.datetime.fromisoformat(stamp)
    if then.tzinfo is None and now.tzinfo is not None:
        then = then.replace(tzinfo=now.tzinfo)
    return now - then


def free_gpu(session: Session, worker_id: int, job_id: int) -> None:
    """Job `job_id` is over on this worker: the GPUs it held are free (a no-op if it held none)."""
    worker = _locked(session, worker_id)
    if any(g["job_id"] == job_id for g in worker.gpus):
        worker.gpus = [
            {**g, "job_id": None, "claimed_at": None} if g["job_id"] == job_id else g for g in worker.gpus
        ]


def get_worker(session: Session, worker_id: int) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"no worker with id {worker_id}")
    return worker


def _locked(session: Session, worker_id: int) -> Worker:
    """The worker's row, read after taking its write lock (an UPDATE that changes nothing): on
    PostgreSQL a row lock, on SQLite the database's write lock, held until the transaction ends."""
    found = session.execute(update(Worker).where(Worker.id == worker_id).values(id=Worker.id))
    if found.rowcount == 0:
        raise NotFound(f"no worker with id {worker_id}")
    return session.scalars(
        select(Worker).where(Worker.id == worker_id).execution_options(populate_existing=True)
    ).one()
