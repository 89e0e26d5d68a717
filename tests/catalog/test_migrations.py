"""Migrations on SQLite and a real PostgreSQL: a blank database upgrades to head, the schema then
matches the models exactly (alembic's own comparison), and an outdated catalog is refused clearly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from catalog.db import make_engine
from catalog.errors import CatalogOutdated
from catalog.migrate import current_revision, head_revision, require_current, upgrade
from catalog.models import Base

TABLES = {"base_models", "prompt_templates", "datasets", "conversions", "jobs", "adapters", "evaluations"}


def _check_upgrade_matches_models(url: str) -> None:
    engine = make_engine(url)
    try:
        with pytest.raises(CatalogOutdated, match="ft init"):
            require_current(engine)
        before, after = upgrade(engine)
        assert before is None and after == head_revision() == current_revision(engine)
        require_current(engine)
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"models and migrations disagree: {diff}"
        assert upgrade(engine) == (head_revision(), head_revision())  # idempotent
    finally:
        engine.dispose()


def test_blank_sqlite_upgrades_to_models(tmp_path):
    _check_upgrade_matches_models(f"sqlite:///{tmp_path / 'c.db'}")


@pytest.mark.services
def test_blank_postgres_upgrades_to_models(postgres_url):
    _check_upgrade_matches_models(postgres_url)


def test_unknown_revision_is_refused(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(CatalogOutdated, match="newer ft"):
        require_current(engine)


def test_sqlite_uses_wal_and_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
