"""Repository functions of the adapter registry: look up, list, register, remove."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.errors import Conflict, NotFound
from catalog.models import Adapter, BaseModel, Evaluation, Job
from catalog.names import check_name


def get_adapter(session: Session, name: str) -> Adapter:
    adapter = session.scalars(select(Adapter).where(Adapter.name == name)).first()
    if adapter is None:
        known = session.scalars(select(Adapter.name).order_by(Adapter.id.desc()).limit(8)).all()
        hint = f" (recent: {', '.join(known)})" if known else " (none registered yet)"
        raise NotFound(f"unknown adapter {name!r}{hint}; see `ft adapters list`")
    return adapter


def list_adapters(
    session: Session, *, method: str | None = None, model: str | None = None, user: str | None = None
) -> Sequence[Adapter]:
    stmt = select(Adapter).order_by(Adapter.id)
    if method:
        stmt = stmt.where(Adapter.method == method)
    if model:
        stmt = stmt.join(BaseModel, Adapter.base_model_id == BaseModel.id).where(BaseModel.name == model)
    if user:
        stmt = stmt.where(Adapter.created_by == user)
    return session.scalars(stmt).all()


def check_adapter_name_free(session: Session, name: str, *, except_job: int | None = None) -> None:
    """Refuse a name that an adapter has, or that a queued/running train job will give one."""
    check_name(name, "adapter name (--name)")
    if session.scalars(select(Adapter.id).where(Adapter.name == name)).first() is not None:
        raise Conflict(f"adapter {name!r} already exists: choose another --name, or `ft adapters rm {name}`")
    pending = session.scalars(
        select(Job).where(Job.kind == "train", Job.status.in_(("queued", "running")))
    ).all()
    for job in pending:
        if job.id != except_job and job.spec.get("name") == name:
            raise Conflict(
                f"job {job.id} is already training an adapter named {name!r}: choose another --name"
            )


def register_adapter(session: Session, adapter: Adapter) -> Adapter:
    """Insert a new adapter row (a name collision is an error, never an overwrite)."""
    if session.scalars(select(Adapter.id).where(Adapter.name == adapter.name)).first() is not None:
        raise Conflict(f"adapter {adapter.name!r} already exists; it was not overwritten")
    session.add(adapter)
    session.flush()
    return adapter


def remove_adapter(session: Session, name: str) -> Adapter:
    """Delete an adapter row and its evaluations; the caller removes the artifact after commit."""
    adapter = get_adapter(session, name)
    children = session.scalars(select(Adapter.name).where(Adapter.parent_id == adapter.id)).all()
    if children:
        raise Conflict(f"adapter {name!r} is the parent of {', '.join(children)}: remove those first")
    pending = session.scalars(
        select(Job).where(Job.kind == "train", Job.status.in_(("queued", "running")))
    ).all()
    continuing = [j.id for j in pending if (j.spec.get("parent") or {}).get("adapter_id") == adapter.id]
    if continuing:
        jobs = ", ".join(map(str, continuing))
        raise Conflict(f"job(s) {jobs} continue training from adapter {name!r} (--from): cancel them first")
    for evaluation in session.scalars(select(Evaluation).where(Evaluation.adapter_id == adapter.id)):
        session.delete(evaluation)
    session.delete(adapter)
    return adapter


def lineage(session: Session, adapter: Adapter) -> list[Adapter]:
    """The adapter, its parent (`--from`), the parent's parent, ... up to one trained from a base."""
    chain, seen = [adapter], {adapter.id}
    while chain[-1].parent_id is not None and chain[-1].parent_id not in seen:
        parent = session.get(Adapter, chain[-1].parent_id)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent.id)
    return chain


def artifact_in_use(session: Session, uri: str) -> bool:
    return session.scalars(select(Adapter.id).where(Adapter.artifact_uri == uri)).first() is not None
