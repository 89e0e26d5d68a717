"""Registering a raw file as a dataset version, and finding, listing and removing versions.

`add_dataset` reads the file once, streaming: each valid row becomes a canonical line in a
temporary file inside a store staging directory (bad rows go to the report). If the report
refuses the file, the staging directory is dropped and nothing else has happened. Otherwise a
second pass writes the seeded splits, `meta.json` is added, the directory is committed to the
store (content-addressed) and one `datasets` row is inserted. Canonical content identical to the
latest version of the name (same sha256) is recognised: no new version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import Conflict, FtError, InvalidInput, NotFound
from catalog.models import Adapter, Conversion, Dataset, Evaluation
from catalog.names import check_name, split_ref
from catalog.store import ArtifactStore, StoredArtifact
from datasets_prep.canonical import META, split_file
from datasets_prep.formats import AUTO
from datasets_prep.formats.base import Format
from datasets_prep.reader import RawReader
from datasets_prep.split import TEST, SplitValue, check_splits, split_counts, write_splits
from datasets_prep.validate import FileResult, Report, refuse_if_invalid, resolve_format, valid_lines

ARTIFACT_KIND = "datasets"
_ROWS_TMP = "rows.tmp"  # every valid row of the main file, before the split; never committed


@dataclass(frozen=True)
class AddResult:
    dataset: Dataset
    """The version registered, or the latest version when it already held this content."""
    created: bool
    """False when the content was identical to the latest version's (no new version)."""
    report: list[str]
    """This run's report: `FILE:LINE: CODE: message` for skipped rows and warnings."""


def add_dataset(
    catalog: Catalog,
    store: ArtifactStore,
    name: str,
    path: str | Path,
    fmt: str = AUTO,
    *,
    test_path: str | Path | None = None,
    splits: Mapping[str, SplitValue] | None = None,
    seed: int = 0,
    skip_invalid: bool = False,
    user: str,
) -> AddResult:
    """Validate, convert and split `path` (and `test_path`) and register them as `name`'s next version.

    `splits` maps split names to a row count or a fraction (`{"test": 100}`, `{"test": 0.1}`);
    the rest is `train`. `test_path` is a separate file (same format) used as the `test` split.
    Bad rows refuse the whole file (InvalidRows, listing them) unless `skip_invalid`.
    """
    check_name(name, "dataset name")
    source = _existing_file(path, "FILE")
    test = _existing_file(test_path, "--test") if test_path is not None else None
    wanted = check_splits(splits, test_file=test is not None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"--seed {seed!r}: expected an integer")
    form = resolve_format(fmt, str(path))
    report = Report()
    seen: set[bytes] = set()
    with store.staging() as stage:
        files = [_convert(str(path), form, stage / _ROWS_TMP, seen, report)]
        if test is not None:
            files.append(_convert(str(test_path), form, split_file(stage, TEST), seen, report))
        refuse_if_invalid(report, files, form, skip_invalid)
        counts = split_counts(wanted, files[0].rows, files[0].display)
        write_splits(stage / _ROWS_TMP, stage, counts, seed)
        if test is not None:
            counts[TEST] = files[1].rows
        meta = {"format": form.name, "counts": counts, "splits": wanted, "seed": seed if wanted else None}
        (stage / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        artifact = store.commit(stage, ARTIFACT_KIND)
    split_spec = {
        "seed": seed,
        "splits": wanted,
        "test_file": None if test is None else {"path": str(test.resolve()), "sha256": files[1].sha256},
    }
    dataset = Dataset(
        name=name,
        source_format=form.name,
        source_path=str(source.resolve()),
        source_sha256=files[0].sha256,
        artifact_uri=artifact.uri,
        sha256=artifact.sha256,
        split_counts=counts,
        split_spec=split_spec,
        invalid_count=report.errors,
        report=report.lines(),
        created_by=user,
    )
    return _record(catalog, store, dataset, artifact)


def _existing_file(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"{flag} {path}: no such file")
    if not p.is_file():
        raise InvalidInput(f"{flag} {path}: not a regular file")
    return p


def _convert(display: str, form: Format, dest: Path, seen: set[bytes], report: Report) -> FileResult:
    reader = RawReader(display)
    result = FileResult(display)
    with open(dest, "wb") as out:
        for line in valid_lines(reader, form, seen, report, result):
            out.write(line)
    return result


def _record(catalog: Catalog, store: ArtifactStore, dataset: Dataset, artifact: StoredArtifact) -> AddResult:
    """Insert the version, unless the latest one holds the same content; never leave a stray artifact."""
    try:
        with catalog.session() as s:
            latest = latest_dataset(s, dataset.name)
            if latest is not None and latest.sha256 == dataset.sha256:
                return AddResult(latest, False, list(dataset.report))
            dataset.version = latest.version + 1 if latest is not None else 1
            s.add(dataset)
            s.flush()
        return AddResult(dataset, True, list(dataset.report))
    except IntegrityError as exc:
        _drop_if_unreferenced(catalog, store, artifact.uri)
        raise Conflict(
            f"dataset {dataset.name} got a new version from another registration at the same moment; "
            "run the command again"
        ) from exc
    except BaseException:
        _drop_if_unreferenced(catalog, store, artifact.uri)
        raise


def _drop_if_unreferenced(catalog: Catalog, store: ArtifactStore, uri: str) -> None:
    try:
        with catalog.session() as s:
            used = s.scalar(select(func.count()).select_from(Dataset).where(Dataset.artifact_uri == uri))
    except FtError:  # the catalog is unreachable: a stray artifact is harmless, a lost one is not
        return
    if not used:
        store.remove(uri)


# ---------------------------------------------------------------- catalog functions


def latest_dataset(session: Session, name: str) -> Dataset | None:
    return session.scalars(
        select(Dataset).where(Dataset.name == name).order_by(Dataset.version.desc()).limit(1)
    ).first()


def get_dataset(session: Session, ref: str) -> Dataset:
    """`name` (the latest version) or `name:version`."""
    name, version = split_ref(ref)
    if version is None:
        found = latest_dataset(session, name)
    else:
        found = session.scalars(
            select(Dataset).where(Dataset.name == name, Dataset.version == version)
        ).first()
    if found is not None:
        return found
    versions = session.scalars(
        select(Dataset.version).where(Dataset.name == name).order_by(Dataset.version)
    ).all()
    if versions:
        raise NotFound(f"dataset {name} has no version {version} (versions: {', '.join(map(str, versions))})")
    known = ", ".join(list_dataset_names(session)) or "none"
    raise NotFound(f"unknown dataset {ref!r} (known: {known}); see `ft datasets list`")


def list_dataset_names(session: Session) -> Sequence[str]:
    return session.scalars(select(Dataset.name).distinct().order_by(Dataset.name)).all()


def list_datasets(session: Session, all_versions: bool = False) -> Sequence[Dataset]:
    """Every dataset's latest version (or every version), by name then version."""
    stmt = select(Dataset).order_by(Dataset.name, Dataset.version)
    if not all_versions:
        latest = select(Dataset.name, func.max(Dataset.version).label("v")).group_by(Dataset.name).subquery()
        stmt = stmt.join(latest, (Dataset.name == latest.c.name) & (Dataset.version == latest.c.v))
    return session.scalars(stmt).all()


def dataset_users(session: Session, dataset: Dataset) -> list[str]:
    """What in the catalog refers to this dataset version (conversions, adapters, evaluations)."""
    users = [
        f"adapter {n}" for n in session.scalars(select(Adapter.name).where(Adapter.dataset_id == dataset.id))
    ]
    users += [
        f"conversion {i}"
        for i in session.scalars(select(Conversion.id).where(Conversion.dataset_id == dataset.id))
    ]
    users += [
        f"evaluation {i}"
        for i in session.scalars(select(Evaluation.id).where(Evaluation.dataset_id == dataset.id))
    ]
    return users


def remove_dataset(catalog: Catalog, store: ArtifactStore, ref: str) -> Dataset:
    """Delete one version (`name` = the latest) and its artifact when nothing else shares it.

    Refused (Conflict) while a conversion, adapter or evaluation refers to the version.
    """
    with catalog.session() as s:
        dataset = get_dataset(s, ref)
        users = dataset_users(s, dataset)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise Conflict(f"dataset {dataset.ref} is used by {shown}; remove those first")
        s.delete(dataset)
        s.flush()
        shared = s.scalar(
            select(func.count()).select_from(Dataset).where(Dataset.artifact_uri == dataset.artifact_uri)
        )
    if not shared:
        store.remove(dataset.artifact_uri)
    return dataset
