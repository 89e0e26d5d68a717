"""The canonical dataset artifact: one `<split>.jsonl` of canonical rows per split, plus `meta.json`.

Written once by dataset registration, read by conversion and evaluation. Rows are streamed, never
loaded whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from catalog.errors import NotFound
from catalog.models import Dataset
from catalog.store import ArtifactStore
from datasets_prep.rows import Row

META = "meta.json"


def split_file(root: Path, split: str) -> Path:
    return root / f"{split}.jsonl"


def write_rows(path: Path, rows: Iterable[Row]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def iter_rows(path: Path) -> Iterator[Row]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Row.from_json(json.loads(line))


def load_split(store: ArtifactStore, dataset: Dataset, split: str) -> Iterator[Row]:
    """Stream the canonical rows of one split of a registered dataset version."""
    if split not in dataset.split_counts:
        raise NotFound(
            f"dataset {dataset.ref} has no split {split!r} (splits: {', '.join(dataset.split_counts)})"
        )
    path = split_file(store.path(dataset.artifact_uri), split)
    if not path.is_file():
        raise NotFound(f"dataset {dataset.ref}: {path} is missing from the artifact store")
    return iter_rows(path)
