"""An adapter's stored files as one zip, streamed while it is written (no temporary file, flat memory).

The directory comes from the adapter's catalog row (`artifact_uri`, resolved by the artifact store),
never from the request, and its files are checked against the catalog's sha256 before the first byte
is sent: the files listed in the artifact's manifest are the only ones read."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

from catalog.integrity import verify_artifact
from catalog.store import MANIFEST, ArtifactStore

CHUNK = 1 << 20


class _Sink:
    """A write-only file for zipfile: what it is given is collected until `drain()` hands it on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def adapter_files(store: ArtifactStore, uri: str, sha256: str, label: str) -> tuple[Path, list[str]]:
    """The verified artifact directory and its files (store-relative, from the manifest)."""
    root = verify_artifact(store, uri, sha256, label)
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    return root, [entry["path"] for entry in manifest["files"]] + [MANIFEST]


def stream_zip(root: Path, files: list[str], folder: str) -> Iterator[bytes]:
    """The zip of `files` under `root`, each stored as `folder/<path>`, in chunks as they are written."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # type: ignore[arg-type]
        for rel in files:
            with open(root / rel, "rb") as src, zf.open(f"{folder}/{rel}", "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if data := sink.drain():
                        yield data
            if data := sink.drain():
                yield data
    yield sink.drain()
