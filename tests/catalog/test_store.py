"""The artifact store: atomic, content-addressed commits, verification, and names that cannot escape."""

from __future__ import annotations

import json
import os

import pytest

from catalog.errors import InvalidInput, NotFound
from catalog.names import check_name, split_ref
from catalog.store import MANIFEST, ArtifactStore


def _stage(store: ArtifactStore, files: dict[str, bytes], kind: str = "things"):
    with store.staging() as d:
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        return store.commit(d, kind)


def test_commit_is_content_addressed_and_verified(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    art = _stage(store, {"x.txt": b"hello", "sub/y.bin": b"\x00\x01"})
    root = store.path(art.uri)
    assert art.uri == f"things/{art.sha256}" and art.files == 2 and art.size_bytes == 7
    manifest = json.loads((root / MANIFEST).read_text())
    assert {e["path"] for e in manifest["files"]} == {"x.txt", "sub/y.bin"}
    assert store.verify(art.uri) == []
    # identical content is stored once; different content gets another address
    assert _stage(store, {"x.txt": b"hello", "sub/y.bin": b"\x00\x01"}) == art
    assert _stage(store, {"x.txt": b"hellO"}).uri != art.uri
    # staging leaves nothing behind
    assert list((store.root / ".staging").iterdir()) == []
    (root / "x.txt").write_bytes(b"tampered")
    assert store.verify(art.uri) == ["x.txt: sha256 mismatch"]


def test_crash_before_commit_leaves_no_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(RuntimeError):
        with store.staging() as d:
            (d / "half.bin").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert not (store.root / "things").exists()
    assert list((store.root / ".staging").iterdir()) == []


def test_leftover_without_manifest_is_replaced(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    art = _stage(store, {"f": b"1"})
    root = store.path(art.uri)
    os.remove(root / MANIFEST)  # as if a crash happened between rename and manifest (cannot, but be safe)
    assert not store.exists(art.uri)
    again = _stage(store, {"f": b"1"})
    assert store.exists(again.uri) and store.verify(again.uri) == []


@pytest.mark.parametrize(
    "uri", ["../etc", "/abs/path", "a/../../b", "a\\b", "nul\x00byte", "", "things/.hidden", "a//b"]
)
def test_uris_cannot_escape(tmp_path, uri):
    with pytest.raises(InvalidInput):
        ArtifactStore(tmp_path).path(uri)


def test_links_are_refused(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    with store.staging() as d:
        (d / "link").symlink_to("/etc/passwd")
        with pytest.raises(InvalidInput, match="links"):
            store.commit(d, "things")


def test_verify_missing(tmp_path):
    with pytest.raises(NotFound):
        ArtifactStore(tmp_path).verify("things/abc")


BAD_NAMES = ["..", ".", "a/b", "/x", "a\x00", "", " x", "-rf", ".git", "a..b", "x" * 129]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names(name):
    with pytest.raises(InvalidInput, match="invalid"):
        check_name(name)


@pytest.mark.parametrize("name", ["faults", "adgen-v2", "Qwen2.5_1.5B", "lora+dora", "a"])
def test_good_names(name):
    assert check_name(name) == name


def test_split_ref():
    assert split_ref("faults") == ("faults", None)
    assert split_ref("faults:3") == ("faults", 3)
    with pytest.raises(InvalidInput, match="NAME:VERSION"):
        split_ref("faults:latest")
