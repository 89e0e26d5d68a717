"""`ft doctor`: re-verify every registered artifact and find what the artifact store holds for nothing.

Two questions, both answered from the catalog and the files, never from the verification cache:

- Is every artifact a catalog row references intact? Each is re-hashed (`artifact_problems(...,
  use_cache=False)`), so a forged or stale `.verified/` entry cannot hide damage.
- What is left over? A `<kind>/<digest>` directory no row references (a crash between commit and
  registration), a `.staging/` directory of a killed write, a `.jobs/N` directory of a job that is
  finished (or gone from the catalog), and verification-cache entries of artifacts that are gone.

`repair` removes leftovers, and nothing else: a referenced artifact, damaged or not, is only
reported, and the directory of a queued or running job is never touched. An orphan or a staging
directory younger than `min_age_seconds` is reported but kept, since a writer may be between its
commit and its registration right now; each removal re-reads the catalog first. Removing a failed
job's checkpoints means `ft jobs retry` starts it from step 0.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from catalog.db import Catalog
from catalog.errors import FtError
from catalog.integrity import CACHE_DIR, artifact_problems, digest_of
from catalog.models import FINISHED_STATUSES, Adapter, BaseModel, Conversion, Dataset, Evaluation, Job
from catalog.store import ArtifactStore

JOBS_DIR = ".jobs"
STAGING_DIR = ".staging"
DEFAULT_MIN_AGE_SECONDS = 3600
"""An unreferenced artifact or staging directory younger than this may belong to a write in progress."""
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A store artifact some catalog rows point at, with the sha256 they recorded."""

    uri: str
    sha256: str
    used_by: tuple[str, ...]
    """What refers to it, e.g. ("adapter faults-lora", "dataset faults:1")."""


@dataclass(frozen=True)
class Damaged:
    uri: str
    used_by: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class Leftover:
    what: str
    """"orphan" (unreferenced artifact), "staging" (a killed write) or "job" (a finished job's files)."""
    path: Path
    size_bytes: int
    reason: str
    removable: bool
    """False when it is younger than the minimum age: reported, kept."""


@dataclass
class DoctorReport:
    checked: int = 0
    damaged: list[Damaged] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    removed: list[Leftover] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        """True when no referenced artifact is damaged (leftovers only cost space)."""
        return not self.damaged

    def to_json(self) -> dict[str, Any]:
        def row(item: Any) -> dict[str, Any]:
            d = asdict(item)
            if "path" in d:
                d["path"] = str(d["path"])
            return d

        return {
            "ok": self.ok,
            "checked": self.checked,
            "damaged": [row(d) for d in self.damaged],
            "leftovers": [row(x) for x in self.leftovers],
            "removed": [str(x.path) for x in self.removed],
            "repaired": self.repaired,
        }


def referenced_artifacts(catalog: Catalog, store: ArtifactStore) -> dict[str, Reference]:
    """Every store uri a catalog row points at: datasets, conversions, adapters, evaluation predictions,
    imported base models (and a `path` base model that lies inside the store)."""
    found: dict[str, tuple[str, list[str]]] = {}

    def add(uri: str | None, sha256: str | None, label: str) -> None:
        if uri:
            found.setdefault(uri, (sha256 or digest_of(uri), []))[1].append(label)

    with catalog.session() as s:
        for d in s.scalars(select(Dataset).order_by(Dataset.id)):
            add(d.artifact_uri, d.sha256, f"dataset {d.ref}")
        for c in s.scalars(select(Conversion).order_by(Conversion.id)):
            add(c.artifact_uri, c.sha256, f"conversion {c.id}")
        for a in s.scalars(select(Adapter).order_by(Adapter.id)):
            add(a.artifact_uri, a.sha256, f"adapter {a.name}")
        for e in s.scalars(select(Evaluation).order_by(Evaluation.id)):
            add(e.predictions_uri, e.predictions_sha256, f"predictions of evaluation {e.id}")
        for m in s.scalars(select(BaseModel).order_by(BaseModel.id)):
            if m.source == "gguf":  # its sha256 is the GGUF file's; the store names the directory
                add(m.uri, None, f"base model {m.name}")
            elif m.source == "path" and (inside := _store_relative(store, Path(m.uri))):
                add(inside, None, f"base model {m.name}")
    return {uri: Reference(uri, sha, tuple(labels)) for uri, (sha, labels) in found.items()}


def check_artifacts(references: dict[str, Reference], store: ArtifactStore) -> list[Damaged]:
    """Re-hash every referenced artifact, ignoring the verification cache."""
    damaged = []
    for ref in references.values():
        try:
            problems = artifact_problems(store, ref.uri, ref.sha256, use_cache=False)
        except FtError as exc:  # an uri the store refuses (it would escape the store)
            problems = [str(exc)]
        if problems:
            damaged.append(Damaged(ref.uri, ref.used_by, tuple(problems)))
    return damaged


def find_leftovers(
    catalog: Catalog,
    store: ArtifactStore,
    references: dict[str, Reference],
    *,
    min_age_seconds: float = DEFAULT_MIN_AGE_SECONDS,
    now: float | None = None,
) -> list[Leftover]:
    """Unreferenced artifacts, staging directories and finished jobs' directories, with their sizes."""
    now = time.time() if now is None else now
    found = []
    for uri, path in _stored_artifacts(store):
        if uri not in references:
            young = now - _newest_mtime(path) < min_age_seconds
            found.append(Leftover("orphan", path, _size(path), "no catalog row refers to it", not young))
    staging = store.root / STAGING_DIR
    for path in sorted(staging.iterdir()) if staging.is_dir() else ():
        young = now - _newest_mtime(path) < min_age_seconds
        found.append(Leftover("staging", path, _size(path), "left by an interrupted write", not young))
    statuses = _job_statuses(catalog)
    jobs = store.root / JOBS_DIR
    for path in sorted(jobs.iterdir(), key=lambda p: p.name.zfill(20)) if jobs.is_dir() else ():
        if not path.name.isdigit():
            continue
        status = statuses.get(int(path.name))
        if status is None:
            found.append(Leftover("job", path, _size(path), f"job {path.name} is not in the catalog", True))
        elif status in FINISHED_STATUSES:
            found.append(Leftover("job", path, _size(path), f"files of {status} job {path.name}", True))
    return found


def run_doctor(
    catalog: Catalog,
    store: ArtifactStore,
    *,
    repair: bool = False,
    min_age_seconds: float = DEFAULT_MIN_AGE_SECONDS,
) -> DoctorReport:
    """Verify everything, list the leftovers, and with `repair` remove the removable ones."""
    references = referenced_artifacts(catalog, store)
    report = DoctorReport(checked=len(references), repaired=repair)
    report.damaged = check_artifacts(references, store)
    report.leftovers = find_leftovers(catalog, store, references, min_age_seconds=min_age_seconds)
    if repair:
        for item in report.leftovers:
            if item.removable and _still_removable(catalog, store, item):
                shutil.rmtree(item.path, ignore_errors=True)
                report.removed.append(item)
        _drop_stale_cache(store, referenced_artifacts(catalog, store))
    return report


def _still_removable(catalog: Catalog, store: ArtifactStore, item: Leftover) -> bool:
    """Re-read the catalog just before removing: a row registered or a job retried meanwhile wins."""
    if item.what == "orphan":
        return _store_relative(store, item.path) not in referenced_artifacts(catalog, store)
    if item.what == "job":
        status = _job_statuses(catalog, int(item.path.name)).get(int(item.path.name))
        return status is None or status in FINISHED_STATUSES
    return True


def _stored_artifacts(store: ArtifactStore) -> Iterator[tuple[str, Path]]:
    """(uri, path) of every `<kind>/<digest>` directory; kinds starting with '.' are the store's own."""
    if not store.root.is_dir():
        return
    for kind in sorted(store.root.iterdir()):
        if kind.name.startswith(".") or not kind.is_dir() or kind.is_symlink():
            continue
        for path in sorted(kind.iterdir()):
            if _DIGEST.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                yield f"{kind.name}/{path.name}", path


def _store_relative(store: ArtifactStore, path: Path) -> str | None:
    """`<kind>/<digest>` when `path` is an artifact directory of this store, else None."""
    try:
        rel = path.resolve().relative_to(store.root.resolve())
    except ValueError:
        return None
    return rel.as_posix() if len(rel.parts) == 2 and not rel.parts[0].startswith(".") else None


def _job_statuses(catalog: Catalog, job_id: int | None = None) -> dict[int, str]:
    stmt = select(Job.id, Job.status)
    if job_id is not None:
        stmt = stmt.where(Job.id == job_id)
    with catalog.session() as s:
        return {jid: status for jid, status in s.execute(stmt)}


def _drop_stale_cache(store: ArtifactStore, references: dict[str, Reference]) -> None:
    """Remove verification-cache entries of artifacts no longer referenced (they only cost a re-hash)."""
    cache = store.root / CACHE_DIR
    keep = {f"{uri.replace('/', '-')}.json" for uri in references}
    for entry in cache.iterdir() if cache.is_dir() else ():
        if entry.suffix == ".json" and entry.is_file() and entry.name not in keep:  # not a `.tmp-` write
            entry.unlink(missing_ok=True)


def _walk(path: Path) -> Iterator[os.stat_result]:
    yield path.lstat()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                yield os.lstat(os.path.join(root, name))
            except OSError:
                continue


def _size(path: Path) -> int:
    try:
        return sum(st.st_size for st in _walk(path) if not stat.S_ISDIR(st.st_mode))
    except OSError:
        return 0


def _newest_mtime(path: Path) -> float:
    try:
        return max(st.st_mtime for st in _walk(path))
    except (OSError, ValueError):
        return 0.0
