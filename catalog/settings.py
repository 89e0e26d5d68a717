"""Where ft keeps its state, read once from the environment into an explicit object.

`FT_HOME` (default `~/.ft`) holds the embedded SQLite catalog, the embedded SQLite broker and the
artifact store. A team points `FT_DATABASE_URL`, `FT_BROKER_URL` and `FT_ARTIFACTS` at shared
services instead; the same code runs on both.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    """`FT_HOME`: the directory holding the embedded catalog, broker and artifacts."""
    database_url: str
    """`FT_DATABASE_URL`: any SQLAlchemy URL; default SQLite at `$FT_HOME/catalog.db`."""
    broker_url: str
    """`FT_BROKER_URL`: Celery broker; default kombu's SQLAlchemy transport on `$FT_HOME/broker.db`."""
    artifacts: Path
    """`FT_ARTIFACTS`: the artifact store root; default `$FT_HOME/artifacts`."""
    user: str
    """`FT_USER`, else the OS user: recorded as `created_by` / `submitted_by`."""
    lease_seconds: int = 60
    """`FT_LEASE_SECONDS`: how long a worker's claim on a job lasts without a heartbeat."""
    broker_visibility_timeout: int = 3600
    """`FT_BROKER_VISIBILITY_TIMEOUT`: seconds after which Redis hands a delivered but unacknowledged
    message to another worker (kombu's `visibility_timeout`); the lease drops the second copy."""
    resend_grace_seconds: int = 60
    """`FT_RESEND_GRACE_SECONDS`: a job `queued` this long with no message in the broker is re-sent."""

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    def tensorboard_dir(self, job_id: int) -> Path:
        """Where a training job writes its TensorBoard event files."""
        return self.logs / f"job-{job_id}-tb"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("FT_HOME") or Path.home() / ".ft").expanduser().resolve()
        return cls(
            home=home,
            database_url=env.get("FT_DATABASE_URL") or f"sqlite:///{home / 'catalog.db'}",
            broker_url=env.get("FT_BROKER_URL") or f"sqla+sqlite:///{home / 'broker.db'}",
            artifacts=Path(env.get("FT_ARTIFACTS") or home / "artifacts").expanduser().resolve(),
            user=env.get("FT_USER") or _os_user(),
            lease_seconds=int(env.get("FT_LEASE_SECONDS") or 60),
            broker_visibility_timeout=int(env.get("FT_BROKER_VISIBILITY_TIMEOUT") or 3600),
            resend_grace_seconds=int(env.get("FT_RESEND_GRACE_SECONDS") or 60),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` rebuild these settings (for a job's child processes)."""
        return {
            "FT_HOME": str(self.home),
            "FT_DATABASE_URL": self.database_url,
            "FT_BROKER_URL": self.broker_url,
            "FT_ARTIFACTS": str(self.artifacts),
            "FT_USER": self.user,
            "FT_LEASE_SECONDS": str(self.lease_seconds),
            "FT_BROKER_VISIBILITY_TIMEOUT": str(self.broker_visibility_timeout),
            "FT_RESEND_GRACE_SECONDS": str(self.resend_grace_seconds),
        }

    def ensure_dirs(self) -> None:
        for path in (self.home, self.artifacts, self.logs, self.cache):
            path.mkdir(parents=True, exist_ok=True)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return f"uid{os.getuid()}"
