"""Schema migrations: `ft init` upgrades to head; every other command refuses an outdated catalog."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from catalog.errors import CatalogOutdated, ServiceUnavailable

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise ServiceUnavailable(
            f"cannot reach the catalog database: {str(exc.orig).strip().splitlines()[0]}"
            " (check FT_DATABASE_URL and that the server runs)"
        ) from exc


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the database behind `engine` to head; returns (revision before, revision after)."""
    before = current_revision(engine)
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head_revision()


def require_current(engine: Engine) -> None:
    """Raise a clear error unless the catalog is at the head revision."""
    rev = current_revision(engine)
    head = head_revision()
    if rev == head:
        return
    if rev is None:
        raise CatalogOutdated("the catalog is not initialised: run `ft init` first")
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}
    if rev not in known:
        raise CatalogOutdated(
            f"the catalog is at revision {rev}, which this ft does not know (newer ft?): upgrade ft"
        )
    raise CatalogOutdated(f"the catalog is at revision {rev}, older than this ft ({head}): run `ft init`")
