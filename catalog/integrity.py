"""Checking a stored artifact against the sha256 the catalog recorded, before anything loads it.

The catalog row pins the sha256 of the artifact's `MANIFEST.json`, and the manifest pins each file's
size and sha256, so one short hash (the manifest) plus one per file proves the directory is what was
registered. Re-hashing a multi-GB model on every load would be slow, so each file's verdict is cached
by what `stat` says about it: size, mtime_ns, ctime_ns and inode. A file rewritten in place, truncated,
or restored by a copy that keeps the mtime (`cp -p`, `rsync -a`) changes ctime or inode and is hashed
again.

The cache is a small JSON file per artifact in the store itself, `<store>/.verified/<kind>-<digest>.json`,
rather than in each user's FT_HOME: every worker and user sharing FT_ARTIFACTS sees the same files, so
one verification serves the whole team, and a per-artifact file written by rename needs no lock between
hosts. It is not an artifact (no kind starts with '.'); losing it only costs a re-hash. It guards against
damage, not against someone who can write the store and forge the cache as well: `ft doctor` ignores
the cache and re-hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from catalog.errors import ArtifactDamaged
from catalog.store import MANIFEST, ArtifactStore, sha256_file

CACHE_DIR = ".verified"


def digest_of(uri: str) -> str:
    """The manifest sha256 a store uri (`<kind>/<digest>`) was named by."""
    return uri.rsplit("/", 1)[-1]


def verify_artifact(store: ArtifactStore, uri: str, sha256: str, label: str) -> Path:
    """The artifact's directory, once its files match the catalog's `sha256`; else ArtifactDamaged, one
    line naming `label` (e.g. "adapter faults-lora") and the first damaged file."""
    problems = artifact_problems(store, uri, sha256)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ArtifactDamaged(
            f"{label} is damaged: {problems[0]}{more}; restore the file or re-create the artifact "
            "(`ft doctor` lists every damaged artifact)"
        )
    return store.path(uri)


def verify_directory(directory: Path, sha256: str | None, label: str) -> Path:
    """`verify_artifact` for a directory known by its path (`<store>/<kind>/<digest>`): against `sha256`,
    or when None the digest the store named it by. A directory without a manifest (not from the store,
    e.g. an artifact just saved) is returned as it is."""
    directory = Path(directory).resolve()
    if not (directory / MANIFEST).is_file():
        return directory
    store = ArtifactStore(directory.parent.parent)
    verify_artifact(store, f"{directory.parent.name}/{directory.name}", sha256 or directory.name, label)
    return directory


def artifact_problems(store: ArtifactStore, uri: str, sha256: str, *, use_cache: bool = True) -> list[str]:
    """What is wrong with the artifact at `uri` (empty: it matches `sha256`). Refreshes the cache."""
    root = store.path(uri)
    try:
        raw = (root / MANIFEST).read_bytes()
    except OSError:
        return [f"{root / MANIFEST} is missing"]
    if hashlib.sha256(raw).hexdigest() != sha256:
        return [f"{root / MANIFEST} does not match the catalog's sha256 {sha256[:16]}..."]
    cache_file = store.root / CACHE_DIR / f"{uri.replace('/', '-')}.json"
    cached = _read(cache_file) if use_cache else {}
    fresh: dict[str, list[int]] = {}
    problems = []
    for entry in json.loads(raw)["files"]:
        file = root / entry["path"]
        try:
            st = file.stat()
        except OSError:
            problems.append(f"{file} is missing")
            continue
        if st.st_size != entry["size"]:
            problems.append(f"{file} is {st.st_size} bytes, {entry['size']} when stored (truncated?)")
            continue
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        if cached.get(entry["path"]) != key and sha256_file(file) != entry["sha256"]:
            problems.append(f"{file} has changed since it was stored (sha256 mismatch)")
            continue
        fresh[entry["path"]] = key
    if not problems and fresh != cached:
        _write(cache_file, fresh)
    return problems


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, list[int]]) -> None:
    """Write by rename, so a concurrent reader sees the old cache or the new one; a read-only store
    just goes uncached."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass
