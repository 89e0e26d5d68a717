"""The job row's state machine: create, claim a lease, heartbeat, finish, cancel, retry, requeue.

    queued --claim--> running --finish--> succeeded | failed | cancelled
       ^                 |
       +--lease expired--+   (requeued while attempts < max_attempts, else failed)

Every transition is one guarded UPDATE, so two workers can never both run a job, and a worker
that lost its lease cannot overwrite the state another worker wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.adapters import check_adapter_name_free
from catalog.db import Catalog
from catalog.errors import Conflict, InvalidInput, NotFound
from catalog.models import FINISHED_STATUSES, JOB_KINDS, JOB_STATUSES, Job, utcnow

ACTIVE = ("queued", "running")


class LeaseLost(Exception):
    """This worker no longer owns the job (its lease expired and another worker took it, or it was
    finished elsewhere). Not an FtError: it is never shown to a user, the worker just stops."""


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_job(
    session: Session,
    kind: str,
    spec: dict[str, Any],
    user: str,
    *,
    queue: str = "cpu",
    priority: int = 0,
    max_attempts: int = 3,
    logs_dir: str | None = None,
    idempotency_key: str | None = None,
    adapter_name: str | None = None,
) -> Job:
    """Add a `queued` job (flushed, so it has an id). `adapter_name` is the adapter a train job will
    register: while the job is queued or running no other job may claim the same name."""
    if kind not in JOB_KINDS:
        raise InvalidInput(f"unknown job kind {kind!r}")
    if not 0 <= priority <= 9:
        raise InvalidInput(f"--priority must be between 0 and 9, got {priority}")
    job = Job(
        kind=kind,
        status="queued",
        spec=spec,
        spec_hash=spec_hash(spec),
        submitted_by=user,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        progress={},
        result={},
        idempotency_key=idempotency_key,
        adapter_name=adapter_name,
    )
    session.add(job)
    session.flush()
    if logs_dir is not None:
        job.log_path = f"{logs_dir}/job-{job.id}.log"
    return job


def submit_job(
    catalog: Catalog,
    kind: str,
    spec: dict[str, Any],
    user: str,
    *,
    idempotency_key: str | None = None,
    adapter_name: str | None = None,
    **options: Any,
) -> tuple[Job, bool]:
    """Create a job in its own transaction; returns (job, created). With `idempotency_key`, a job
    this user already submitted with that key is returned instead (created False), however many
    submits race; a key reused for another spec is refused. A train job whose `adapter_name` an
    active job already claims is refused (Conflict), also when the two submits race."""
    if idempotency_key is not None:
        existing = job_for_key(catalog, user, idempotency_key, spec)
        if existing is not None:
            return existing, False
    try:
        with catalog.session() as s:
            job = create_job(
                s, kind, spec, user, idempotency_key=idempotency_key, adapter_name=adapter_name, **options
            )
        return job, True
    except IntegrityError:
        if idempotency_key is not None:
            existing = job_for_key(catalog, user, idempotency_key, spec)
            if existing is not None:
                return existing, False
        if adapter_name is not None:
            raise _name_taken(catalog, adapter_name) from None
        raise


def find_by_key(catalog: Catalog, user: str, key: str) -> Job | None:
    """The job `user` submitted with `--idempotency-key key`, if any."""
    with catalog.session() as s:
        return s.scalars(select(Job).where(Job.submitted_by == user, Job.idempotency_key == key)).first()


def job_for_key(catalog: Catalog, user: str, key: str, spec: dict[str, Any]) -> Job | None:
    """`find_by_key`, refusing a job of that key made from another spec (Conflict)."""
    job = find_by_key(catalog, user, key)
    if job is not None and job.spec_hash != spec_hash(spec):
        raise Conflict(
            f"--idempotency-key {key!r} was already used for job {job.id} with a different spec; "
            "use a new key"
        )
    return job


def _name_taken(catalog: Catalog, name: str) -> Conflict:
    with catalog.session() as s:
        holder = s.scalars(select(Job.id).where(Job.adapter_name == name, Job.status.in_(ACTIVE))).first()
    return Conflict(f"job {holder} is already training an adapter named {name!r}: choose another --name")


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}; see `ft jobs list`")
    return job


def list_jobs(
    session: Session,
    *,
    user: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> Sequence[Job]:
    """The newest `limit` jobs matching the filters; with `before`, only jobs older than that id (the
    next page, by keyset: as fast on page 200 as on page 1)."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(Job.id < before)
    if user:
        stmt = stmt.where(Job.submitted_by == user)
    if status:
        if status not in JOB_STATUSES:
            raise InvalidInput(f"--status must be one of {', '.join(JOB_STATUSES)}, got {status!r}")
        stmt = stmt.where(Job.status == status)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    return session.scalars(stmt).all()


def claim_job(catalog: Catalog, job_id: int, owner: str, lease_seconds: int) -> Job | None:
    """Take the job if it is claimable: queued, or running with an expired lease, not cancelled,
    attempts left. Returns the claimed job, or None if someone else has it or it is finished."""
    now = utcnow()
    with catalog.session() as s:
        claimable = and_(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            Job.attempts < Job.max_attempts,
            or_(Job.status == "queued", and_(Job.status == "running", Job.lease_expires_at < now)),
        )
        res = s.execute(
            update(Job)
            .where(claimable)
            .values(
                status="running",
                lease_owner=owner,
                lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                started_at=now,
                updated_at=now,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            _cancel_if_requested_while_queued(s, job_id)
            return None
        return s.get(Job, job_id, populate_existing=True)


def _cancel_if_requested_while_queued(s: Session, job_id: int) -> None:
    s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(True))
        .values(status="cancelled", finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def heartbeat(
    catalog: Catalog, job_id: int, owner: str, lease_seconds: int, progress: dict[str, Any] | None = None
) -> bool:
    """Renew the lease (and write progress). Returns whether cancellation was requested.
    Raises LeaseLost if this owner no longer holds the job."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + dt.timedelta(seconds=lease_seconds),
        "updated_at": now,
    }
    if progress is not None:
        values["progress"] = progress
    with catalog.session() as s:
        _update_leased(s, job_id, owner, values)
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _update_leased(
    session: Session, job_id: int, owner: str, values: dict[str, Any], *, strict: bool = True
) -> bool:
    """The one guarded UPDATE of a running job: applied only while `owner` holds its lease. Returns
    whether it applied; with `strict`, raises LeaseLost when it did not."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1 and strict:
        raise LeaseLost(f"job {job_id} is no longer leased by {owner}")
    return res.rowcount == 1


def finish_job(
    session: Session,
    job_id: int,
    owner: str,
    status: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
) -> None:
    """Mark the job finished, in the caller's transaction (so results are registered atomically
    with the status). Raises LeaseLost if this owner no longer holds the job."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"not a final status: {status}")
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
    }
    if result is not None:
        values["result"] = result
    if progress is not None:
        values["progress"] = progress
    _update_leased(session, job_id, owner, values)


def release_job(catalog: Catalog, job_id: int, owner: str) -> None:
    """Give a running job back to the queue without counting it as a failure (worker shutdown)."""
    values = {
        "status": "queued",
        "lease_owner": None,
        "lease_expires_at": None,
        "attempts": Job.attempts - 1,
        "updated_at": utcnow(),
    }
    with catalog.session() as s:
        _update_leased(s, job_id, owner, values, strict=False)


def request_cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next step."""
    job = get_job(session, job_id)
    if job.status in FINISHED_STATUSES:
        raise Conflict(f"job {job_id} already {job.status}; nothing to cancel")
    job.cancel_requested = True
    job.updated_at = utcnow()
    if job.status == "queued":
        job.status = "cancelled"
        job.finished_at = utcnow()
    return job


def retry_job(session: Session, job_id: int) -> Job:
    """Put a failed or cancelled job back in the queue with a fresh set of attempts."""
    job = get_job(session, job_id)
    if job.status not in ("failed", "cancelled"):
        raise Conflict(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
    if job.adapter_name is not None:
        check_adapter_name_free(session, job.adapter_name, except_job=job.id)
    job.status = "queued"
    job.cancel_requested = False
    job.error = None
    job.lease_owner = None
    job.lease_expires_at = None
    job.finished_at = None
    job.max_attempts = job.attempts + max(1, job.max_attempts)
    job.updated_at = utcnow()
    if job.adapter_name is not None:
        try:
            session.flush()  # the partial unique index: a train job submitted meanwhile has the name
        except IntegrityError:
            raise Conflict(
                f"job {job_id}: another job is already training an adapter named {job.adapter_name!r}"
            ) from None
    return job


def requeue_expired(catalog: Catalog) -> list[Job]:
    """Jobs whose lease expired while running: back to `queued` (returned, to be re-sent) if they
    have attempts left, else `failed`. Called by workers at start-up and periodically."""
    now = utcnow()
    requeued: list[Job] = []
    with catalog.session() as s:
        stale = s.scalars(
            select(Job)
            .where(Job.status == "running", Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for job in stale:
            if job.cancel_requested:
                job.status, job.finished_at = "cancelled", now
            elif job.attempts >= job.max_attempts:
                job.status, job.finished_at = "failed", now
                job.error = (
                    f"worker {job.lease_owner} stopped responding; gave up after {job.attempts} attempts"
                )
            else:
                job.status = "queued"
                requeued.append(job)
            job.lease_owner, job.lease_expires_at, job.updated_at = None, None, now
    return requeued


def requeue_killed(catalog: Catalog, job_id: int, owner: str, how: str) -> Job | None:
    """The process running a job as `owner` died (`how`, e.g. "killed by signal 9 (SIGKILL)"): put the
    job back to `queued` at once, the attempt counted (so that a job killed every time ends), or
    fail it naming `how` when no attempts are left. Returns the job, or None if `owner` did not
    hold it (it never claimed it, or another worker has it now)."""
    now = utcnow()
    with catalog.session() as s:
        job = s.scalars(
            select(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
        ).first()
        if job is None:
            return None
        if job.cancel_requested:
            job.status, job.finished_at, job.error = "cancelled", now, "cancelled on request"
        elif job.attempts >= job.max_attempts:
            job.status, job.finished_at = "failed", now
            job.error = f"the job process was {how}; gave up after {job.attempts} attempts"
        else:
            job.status, job.error = "queued", f"the job process was {how}; re-queued"
        job.lease_owner, job.lease_expires_at, job.updated_at = None, None, now
        return job


def requeue_attempt(catalog: Catalog, job_id: int, owner: str, reason: str) -> Job | None:
    """The attempt run by `owner` failed in a way another attempt may not (`reason`, e.g. a rank of a
    multi-GPU job was killed): put the job back to `queued`, the attempt counted, to resume from its last
    checkpoint; or fail it with `reason` when no attempts are left. None if `owner` does not hold it."""
    now = utcnow()
    with catalog.session() as s:
        job = s.scalars(
            select(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
        ).first()
        if job is None:
            return None
        if job.cancel_requested:
            job.status, job.finished_at, job.error = "cancelled", now, "cancelled on request"
        elif job.attempts >= job.max_attempts:
            job.status, job.finished_at = "failed", now
            job.error = f"{reason}; gave up after {job.attempts} attempts"
        else:
            job.status, job.error = "queued", f"{reason}; re-queued"
        job.lease_owner, job.lease_expires_at, job.updated_at = None, None, now
        return job


def note_waiting(catalog: Catalog, job_id: int, why: str) -> None:
    """Say why a queued job does not start yet (`ft jobs list` shows it as the job's progress). Its
    message is alive (it comes back after a pause), so the job counts as queued from now: the
    reconciler re-sends only a job whose waiting stopped being noted."""
    with catalog.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(progress={"stage": "waiting", "why": why}, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def queued_since(catalog: Catalog, seconds: float) -> list[Job]:
    """Jobs `queued` (not cancelled) for at least `seconds`: their message may have been lost."""
    cutoff = utcnow() - dt.timedelta(seconds=seconds)
    with catalog.session() as s:
        return list(
            s.scalars(
                select(Job)
                .where(Job.status == "queued", Job.cancel_requested.is_(False), Job.updated_at <= cutoff)
                .order_by(Job.id)
            ).all()
        )


def mark_resent(catalog: Catalog, job_id: int) -> None:
    """Record that a queued job's message was sent again (it counts as queued from now)."""
    with catalog.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
