"""Engines and sessions, built by factories and passed explicitly (no global engine).

SQLite gets WAL, a busy timeout and foreign keys, so that the CLI and several worker processes
can share one catalog file; writes are kept to short transactions by the repository functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from catalog.errors import ServiceUnavailable
from catalog.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Build an engine for `url`; SQLite files get WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Catalog:
    """The catalog handle: settings, one engine and a session factory."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        if settings.database_url.startswith("sqlite"):
            settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = engine or make_engine(settings.database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_env(cls) -> Catalog:
        return cls(Settings.from_env())

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        try:
            with self._sessions() as s, s.begin():
                yield s
        except OperationalError as exc:
            raise ServiceUnavailable(
                f"cannot use the catalog database at {_redact(self.settings.database_url)}: "
                f"{str(exc.orig).strip().splitlines()[0]} (check FT_DATABASE_URL and that the server runs)"
            ) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
