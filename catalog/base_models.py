"""Table access of base models: look up, list, insert (a name is taken once), and where a model's
files lie. Registering (inspecting a directory, importing a GGUF file) is worker.models' work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.errors import Conflict, NotFound
from catalog.models import BaseModel
from catalog.store import ArtifactStore

SOURCES = ("path", "gguf", "hub")


def get_base_model(session: Session, name: str) -> BaseModel:
    model = session.scalars(select(BaseModel).where(BaseModel.name == name)).first()
    if model is None:
        known = ", ".join(m.name for m in list_base_models(session)) or "none"
        raise NotFound(f"unknown base model {name!r} (known: {known}); see `ft models list`")
    return model


def list_base_models(session: Session) -> Sequence[BaseModel]:
    return session.scalars(select(BaseModel).order_by(BaseModel.name)).all()


def check_name_free(session: Session, name: str) -> None:
    if session.scalars(select(BaseModel.id).where(BaseModel.name == name)).first() is not None:
        raise Conflict(f"base model {name!r} already exists; choose another name (see `ft models list`)")


def insert_base_model(session: Session, model: BaseModel) -> BaseModel:
    check_name_free(session, model.name)
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration won the name
        raise Conflict(f"base model {model.name!r} already exists; choose another name") from exc
    return model


def gguf_imports(session: Session, sha256: str) -> Sequence[BaseModel]:
    """Models imported from the GGUF file with this sha256, oldest first."""
    stmt = select(BaseModel).where(BaseModel.source == "gguf", BaseModel.sha256 == sha256)
    return session.scalars(stmt.order_by(BaseModel.id)).all()


def local_dir(store: ArtifactStore | None, model: BaseModel) -> Path | None:
    """Where a `path` model's or an imported `gguf` model's files lie (None for a hub id, whose files
    are in a worker's hub cache, or for a gguf import without the store at hand)."""
    if model.source == "path":
        return Path(model.uri)
    if model.source == "gguf" and store is not None:
        return store.path(model.uri)
    return None
