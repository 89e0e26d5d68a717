"""The artifact store: content-addressed directories, written atomically, verified by sha256.

An artifact is built in a staging directory inside the store (same filesystem), every file is
hashed and fsync'd, a `MANIFEST.json` lists them, and the directory is renamed to
`<kind>/<digest>` where the digest is the sha256 of the manifest. A crash leaves only a staging
directory under `.staging/`, never a half artifact under its final name; identical content is
stored once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import InvalidInput, NotFound
from catalog.names import check_name

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    """Store-relative path, `<kind>/<digest>`."""
    sha256: str
    """sha256 of the manifest, which lists the sha256 of every file."""
    size_bytes: int
    files: int


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Content-addressed directories under one root."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def staging_root(self) -> Path:
        return self.root / ".staging"

    def path(self, uri: str) -> Path:
        """The absolute path of a store-relative `uri`; refuses anything that would escape the store."""
        if not uri or "\x00" in uri or uri.startswith(("/", "\\")) or "\\" in uri:
            raise InvalidInput(f"invalid artifact uri {uri!r}")
        parts = uri.split("/")
        for part in parts:
            check_name(part, "artifact path component")
        path = (self.root / Path(*parts)).resolve()
        root = self.root.resolve()
        if root not in path.parents:
            raise InvalidInput(f"artifact uri {uri!r} escapes the store")
        return path

    def exists(self, uri: str) -> bool:
        return (self.path(uri) / MANIFEST).is_file()

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh staging directory, removed on exit whether or not it was committed."""
        self.staging_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.staging_root, prefix="stage-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, kind: str) -> StoredArtifact:
        """Hash, fsync and atomically move a staged directory to `<kind>/<digest>`."""
        check_name(kind, "artifact kind")
        staged = Path(staged)
        if (staged / MANIFEST).exists():
            raise InvalidInput(f"{MANIFEST} is reserved in artifact directories")
        entries = []
        total = 0
        for file in sorted(p for p in staged.rglob("*") if p.is_file() or p.is_symlink()):
            if file.is_symlink():
                raise InvalidInput(f"artifacts may not contain links: {file.name}")
            rel = file.relative_to(staged).as_posix()
            size = file.stat().st_size
            entries.append({"path": rel, "sha256": sha256_file(file), "size": size})
            total += size
            fsync_path(file)
        manifest = json.dumps({"files": entries}, indent=1, sort_keys=True).encode()
        digest = hashlib.sha256(manifest).hexdigest()
        (staged / MANIFEST).write_bytes(manifest)
        fsync_path(staged / MANIFEST)
        for d in sorted({p.parent for p in staged.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
            fsync_path(d)
        final = self.root / kind / digest
        final.parent.mkdir(parents=True, exist_ok=True)
        artifact = StoredArtifact(uri=f"{kind}/{digest}", sha256=digest, size_bytes=total, files=len(entries))
        if (final / MANIFEST).is_file():  # identical content already stored
            return artifact
        if final.exists():  # a leftover without manifest cannot be a complete artifact
            shutil.rmtree(final)
        moved = staged.with_name(staged.name + ".done")
        os.rename(staged, moved)  # keep the staging context's cleanup from removing the result
        os.rename(moved, final)
        fsync_path(final.parent)
        staged.mkdir()  # the staging context removes this empty directory
        return artifact

    def verify(self, uri: str) -> list[str]:
        """Problems found re-hashing an artifact (empty list: intact)."""
        root = self.path(uri)
        if not (root / MANIFEST).is_file():
            raise NotFound(f"artifact {uri} is missing from the store at {self.root}")
        manifest = json.loads((root / MANIFEST).read_text())
        problems = []
        for entry in manifest["files"]:
            file = root / entry["path"]
            if root.resolve() not in file.resolve().parents:  # a tampered manifest: hash nothing outside
                problems.append(f"{entry['path']}: outside the artifact")
            elif not file.is_file():
                problems.append(f"{entry['path']}: missing")
            elif sha256_file(file) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 mismatch")
        return problems

    def remove(self, uri: str) -> None:
        shutil.rmtree(self.path(uri), ignore_errors=True)
