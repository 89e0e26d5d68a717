"""Table access of conversions (tokenised datasets), found by their cache key."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.models import Conversion


def find_conversion(session: Session, cache_key: str) -> Conversion | None:
    return session.scalars(select(Conversion).where(Conversion.cache_key == cache_key)).first()


def register_conversion(session: Session, conversion: Conversion) -> Conversion:
    """Insert the row in the caller's transaction; an existing row with the same cache key (from a
    concurrent job) is returned instead."""
    existing = find_conversion(session, conversion.cache_key)
    if existing is not None:
        return existing
    session.add(conversion)
    session.flush()
    return conversion
