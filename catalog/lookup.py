"""The one lookup of a versioned name (`name` for the latest version, `name:version`), shared by
datasets and prompt templates, so that one mistake gives one message wherever it is made."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from catalog.errors import NotFound
from catalog.names import split_ref

Row = TypeVar("Row")


def latest_version(session: Session, model: type[Row], name: str) -> Row | None:
    """The highest version of `name`, or None."""
    cls: Any = model
    stmt = select(cls).where(cls.name == name).order_by(cls.version.desc()).limit(1)
    return session.scalars(stmt).first()


def get_versioned(session: Session, model: type[Row], ref: str, *, what: str, listing: str) -> Row:
    """`ref` is `name` (the latest version) or `name:version`. NotFound says which names, or which
    versions of the name, exist, and which command lists them (`ft {listing} list`)."""
    cls: Any = model
    name, version = split_ref(ref)
    if version is None:
        found = latest_version(session, model, name)
    else:
        found = session.scalars(select(cls).where(cls.name == name, cls.version == version)).first()
    if found is not None:
        return found
    versions = session.scalars(select(cls.version).where(cls.name == name).order_by(cls.version)).all()
    if versions:
        raise NotFound(f"{what} {name} has no version {version} (versions: {', '.join(map(str, versions))})")
    known = ", ".join(names(session, model)) or "none"
    raise NotFound(f"unknown {what} {ref!r} (known: {known}); see `ft {listing} list`")


def names(session: Session, model: type[Row]) -> list[str]:
    cls: Any = model
    return list(session.scalars(select(cls.name).distinct().order_by(cls.name)))


def latest_versions(session: Session, model: type[Row], all_versions: bool = False) -> list[Row]:
    """Every name's latest version (or every version), by name then version."""
    cls: Any = model
    stmt = select(cls).order_by(cls.name, cls.version)
    if not all_versions:
        latest = select(cls.name, func.max(cls.version).label("v")).group_by(cls.name).subquery()
        stmt = stmt.join(latest, (cls.name == latest.c.name) & (cls.version == latest.c.v))
    return list(session.scalars(stmt))
