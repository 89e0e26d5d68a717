"""Artifacts are checked against the catalog's sha256 before anything loads them (catalog/integrity.py),
on a real LoRA adapter trained 3 steps on the tiny model: an intact one passes and is cached; one flipped
byte or a truncated file fails with one line naming the file (never a raw SafetensorError), at export,
at `load_for_inference` and in an evaluation job, which then registers no score; the cache follows the
file's stat, so a file changed in place is hashed again, while `use_cache=False` trusts nothing."""

from __future__ import annotations

import json
import os

import pytest

from catalog.adapters import get_adapter
from catalog.errors import ArtifactDamaged
from catalog.evaluations import list_evaluations
from catalog.integrity import CACHE_DIR, artifact_problems, verify_artifact
from catalog.jobs import get_job
from tests.worker.eval_helpers import register_faults, submit_eval, train
from worker.jobs.runner import run_job

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def adapter(catalog, settings, store, tiny_model_dir, tmp_path):
    """(uri, sha256) of the LoRA adapter `a1`, trained and registered through the job runner."""
    register_faults(catalog, store, tiny_model_dir, tmp_path)
    train(catalog, settings, store, "a1", "lora", {"rank": 4})
    with catalog.session() as s:
        a = get_adapter(s, "a1")
        return a.artifact_uri, a.sha256


def flip_byte(path, offset: int = -16) -> None:
    """Flip one byte in place (same size, same inode)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def damaged_message(store, uri, sha256) -> str:
    with pytest.raises(ArtifactDamaged) as err:
        verify_artifact(store, uri, sha256, "adapter a1")
    return str(err.value)


def test_an_intact_artifact_passes_and_is_cached(adapter, store):
    uri, sha256 = adapter
    assert verify_artifact(store, uri, sha256, "adapter a1") == store.path(uri)
    cache = store.root / CACHE_DIR / f"{uri.replace('/', '-')}.json"
    assert cache.is_file()
    manifest = json.loads((store.path(uri) / "MANIFEST.json").read_text())
    assert set(json.loads(cache.read_text())) == {e["path"] for e in manifest["files"]}
    assert artifact_problems(store, uri, sha256, use_cache=False) == []


def test_one_flipped_byte_fails_with_one_line_naming_the_file(adapter, store):
    uri, sha256 = adapter
    flip_byte(store.path(uri) / WEIGHTS)
    message = damaged_message(store, uri, sha256)
    assert "\n" not in message
    assert message.startswith("adapter a1 is damaged: ")
    assert f"{store.path(uri) / WEIGHTS} has changed since it was stored (sha256 mismatch)" in message
    assert "(and" not in message  # only that file


def test_a_truncated_file_says_truncated_not_safetensor_error(adapter, store, tiny_model_dir):
    from worker.methods.saving import load_for_inference

    uri, sha256 = adapter
    weights = store.path(uri) / WEIGHTS
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    message = damaged_message(store, uri, sha256)
    assert "\n" not in message
    assert f"{weights} is {size // 2} bytes, {size} when stored (truncated?)" in message
    with pytest.raises(ArtifactDamaged, match=r"truncated\?") as err:  # the real load path, not safetensors
        load_for_inference(tiny_model_dir, store.path(uri), "lora", sha256=sha256, label="adapter a1")
    assert "SafetensorError" not in str(err.value)


def test_a_damaged_manifest_or_a_missing_file_is_named(adapter, store):
    uri, sha256 = adapter
    (store.path(uri) / "adapter_config.json").unlink()
    assert damaged_message(store, uri, sha256).count("adapter_config.json is missing") == 1
    (store.path(uri) / "MANIFEST.json").write_text('{"files": []}')
    assert "MANIFEST.json does not match the catalog's sha256" in damaged_message(store, uri, sha256)


def test_an_evaluation_job_refuses_a_damaged_adapter_and_registers_no_score(
    adapter, catalog, settings, store
):
    uri, _ = adapter
    flip_byte(store.path(uri) / WEIGHTS)
    (job_id,) = submit_eval(catalog, settings, store, adapters=["a1"], limit=2, max_new_tokens=2)
    assert run_job(catalog, job_id, "test-worker", store=store) == "failed"
    with catalog.session() as s:
        job = get_job(s, job_id)
        assert list_evaluations(s) == []
    assert "\n" not in job.error
    assert job.error.startswith("adapter a1 is damaged: ") and WEIGHTS in job.error


def test_export_refuses_a_damaged_adapter_with_one_line(adapter, store, ft, tmp_path):
    uri, _ = adapter
    ft("adapters", "export", "a1", str(tmp_path / "good"))
    assert (tmp_path / "good" / WEIGHTS).is_file()
    flip_byte(store.path(uri) / WEIGHTS)
    result = ft("adapters", "export", "a1", str(tmp_path / "bad"), ok=False)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: adapter a1 is damaged: ") and WEIGHTS in lines[0]
    assert not (tmp_path / "bad").exists()


def test_the_cache_follows_the_stat_so_a_file_changed_in_place_is_hashed_again(adapter, store):
    uri, sha256 = adapter
    verify_artifact(store, uri, sha256, "adapter a1")
    weights = store.path(uri) / WEIGHTS
    before = weights.stat()
    flip_byte(weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` would: same size, mtime
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns
    assert "sha256 mismatch" in damaged_message(store, uri, sha256)  # ctime moved: hashed again


def test_a_cached_verdict_is_not_re_hashed_and_use_cache_false_trusts_nothing(adapter, store):
    """The second check trusts the cache entry of an unchanged stat, without hashing: shown by
    damaging the file and then forging its entry (what only someone who can write the store could
    do); `use_cache=False` (what `ft doctor` uses) still finds the damage."""
    uri, sha256 = adapter
    verify_artifact(store, uri, sha256, "adapter a1")
    weights = store.path(uri) / WEIGHTS
    flip_byte(weights)
    cache = store.root / CACHE_DIR / f"{uri.replace('/', '-')}.json"
    entries = json.loads(cache.read_text())
    st = weights.stat()
    entries[WEIGHTS] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    cache.write_text(json.dumps(entries))
    assert verify_artifact(store, uri, sha256, "adapter a1") == store.path(uri)
    problems = artifact_problems(store, uri, sha256, use_cache=False)
    assert problems == [f"{weights} has changed since it was stored (sha256 mismatch)"]
