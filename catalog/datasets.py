"""Table access of dataset versions: look up, list, insert a new version, find users, remove."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import Conflict, FtError, InvalidInput, NotFound
from catalog.lookup import get_versioned, latest_version, latest_versions, names
from catalog.models import Adapter, Conversion, Dataset, Evaluation
from catalog.store import ArtifactStore, StoredArtifact

DEFAULT_SPLIT = "test"
"""The split `--dataset NAME` evaluates."""


def get_dataset(session: Session, ref: str) -> Dataset:
    """`name` (the latest version) or `name:version`; NotFound lists what exists."""
    return get_versioned(session, Dataset, ref, what="dataset", listing="datasets")


def parse_dataset_ref(ref: str) -> tuple[str, int | None, str]:
    """`NAME[:VERSION][:SPLIT]` -> (name, version or None for the latest, split; default `test`).

    A number after the name is a version, anything else a split: `faults`, `faults:2`,
    `faults:dev`, `faults:2:dev`."""
    name, *rest = ref.split(":")
    version: int | None = None
    split = DEFAULT_SPLIT
    if len(rest) == 2 and rest[0].isdigit() and rest[1]:
        version, split = int(rest[0]), rest[1]
    elif len(rest) == 1 and rest[0].isdigit():
        version = int(rest[0])
    elif len(rest) == 1 and rest[0]:
        split = rest[0]
    elif rest:
        raise InvalidInput(
            f"--dataset {ref!r}: expected NAME, NAME:SPLIT, NAME:VERSION or NAME:VERSION:SPLIT"
        )
    if not name:
        raise InvalidInput(f"--dataset {ref!r}: the dataset name is missing")
    return name, version, split


def get_dataset_split(session: Session, ref: str) -> tuple[Dataset, str]:
    """The dataset version and split named by `--dataset NAME[:VERSION][:SPLIT]`."""
    name, version, split = parse_dataset_ref(ref)
    dataset = get_dataset(session, name if version is None else f"{name}:{version}")
    if split not in dataset.split_counts:
        splits = ", ".join(f"{k} ({v} rows)" for k, v in dataset.split_counts.items())
        raise NotFound(f"--dataset {ref}: dataset {dataset.ref} has no split {split!r} (splits: {splits})")
    return dataset, split


def latest_dataset(session: Session, name: str) -> Dataset | None:
    return latest_version(session, Dataset, name)


def list_dataset_names(session: Session) -> Sequence[str]:
    return names(session, Dataset)


def list_datasets(session: Session, all_versions: bool = False) -> Sequence[Dataset]:
    """Every dataset's latest version (or every version), by name then version."""
    return latest_versions(session, Dataset, all_versions)


def insert_version(
    catalog: Catalog, store: ArtifactStore, dataset: Dataset, artifact: StoredArtifact
) -> tuple[Dataset, bool]:
    """Insert `dataset` as its name's next version, unless the latest version holds the same content
    (then that one is returned, with False). Never leaves a stray artifact behind on failure."""
    try:
        with catalog.session() as s:
            latest = latest_dataset(s, dataset.name)
            if latest is not None and latest.sha256 == dataset.sha256:
                return latest, False
            dataset.version = latest.version + 1 if latest is not None else 1
            s.add(dataset)
            s.flush()
        return dataset, True
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
