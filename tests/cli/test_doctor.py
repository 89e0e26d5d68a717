"""`ft doctor [--repair] [--json]` through the real CLI on real files: every artifact the real code
registers (dataset, conversion, adapter, predictions) is re-hashed and counted as referenced; a damaged
one is found even under a forged verification cache and exits 1 (and is never removed); an artifact
committed but never registered, a staging left by a SIGKILLed writer and the files of finished or
unknown jobs are listed with their sizes and removed by --repair, while a queued or running job's files
and young leftovers are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from catalog.integrity import CACHE_DIR
from catalog.jobs import claim_job, create_job, finish_job, request_cancel
from tests.conftest import FAULTS_TEST, REPO
from worker.jobs.handlers import job_workdir

JOB_STATES = ("queued", "running", "failed", "cancelled", "succeeded")


@pytest.fixture
def ftc(ft, catalog):
    """`ft` on an initialised catalog holding the dataset `faults:1`."""
    ft("datasets", "add", "faults", str(FAULTS_TEST), "--format", "triples")
    return ft


def doctor_json(ft, *args: str, code: int = 0) -> dict:
    result = ft("doctor", "--json", *args, ok=False)
    assert result.exit_code == code, result.output
    return json.loads(result.output)


def dataset_dir(store):
    (path,) = (store.root / "datasets").iterdir()
    return path


def flip_byte(path) -> None:
    with open(path, "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0x01]))


def job_with_files(catalog, store, status: str) -> int:
    """A job in `status` (through the catalog's own transitions) with a checkpoint file in its directory."""
    with catalog.session() as s:
        job_id = create_job(s, "train", {"name": f"j-{status}"}, "tester").id
    if status in ("running", "failed", "succeeded"):
        claim_job(catalog, job_id, "test-worker", 600)
    if status in ("failed", "succeeded"):
        with catalog.session() as s:
            finish_job(s, job_id, "test-worker", status, error="boom" if status == "failed" else None)
    if status == "cancelled":
        with catalog.session() as s:
            request_cancel(s, job_id)
    ckpt = job_workdir(store, job_id) / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    return job_id


def orphan(store) -> str:
    """What a crash between commit and registration leaves: a committed artifact no row refers to."""
    with store.staging() as d:
        (d / "model.safetensors").write_bytes(b"w" * 4096)
        return store.commit(d, "adapters").uri


def killed_staging(store):
    """A staging directory whose writer was SIGKILLed mid-write."""
    code = (
        "import os, signal, sys; from catalog.store import ArtifactStore\n"
        "with ArtifactStore(sys.argv[1]).staging() as d:\n"
        "    (d / 'part.bin').write_bytes(b'x' * 1000); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(store.root)], cwd=REPO, capture_output=True)
    assert done.returncode == -9, done.stderr
    (path,) = store.staging_root.iterdir()
    return path


def test_a_healthy_store_passes(ftc, store):
    out = ftc("doctor").output
    assert "Checked 1 artifact(s): none damaged" in out and "No leftovers in the artifact store." in out
    report = doctor_json(ftc)
    assert report["ok"] and report["checked"] == 1 and report["damaged"] == [] and report["leftovers"] == []


def test_a_damaged_artifact_is_found_despite_the_cache_exits_1_and_is_kept(ftc, store):
    ftc("doctor")  # verified: the cache holds each file's stat
    train = dataset_dir(store) / "train.jsonl"
    flip_byte(train)
    cache = store.root / CACHE_DIR / f"datasets-{dataset_dir(store).name}.json"
    entries = json.loads(cache.read_text())
    st = train.stat()
    entries["train.jsonl"] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]  # forged
    cache.write_text(json.dumps(entries))

    result = ftc("doctor", ok=False)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "Checked 1 artifact(s): 1 damaged"
    uri = f"datasets/{dataset_dir(store).name}"
    problem = f"{train} has changed since it was stored (sha256 mismatch)"
    assert lines[1] == f"  DAMAGED {uri} (dataset faults:1): {problem}"
    assert lines[-1].startswith("Error: 1 damaged artifact(s)")

    report = doctor_json(ftc, "--repair", "--min-age", "0", code=1)
    assert not report["ok"] and report["removed"] == []
    assert report["damaged"] == [
        {
            "uri": uri,
            "used_by": ["dataset faults:1"],
            "problems": [problem],
        }
    ]
    assert train.is_file()  # a referenced artifact is reported, never removed


def test_leftovers_are_listed_with_sizes_and_repair_removes_only_them(ftc, catalog, store):
    orphan_uri = orphan(store)
    staging = killed_staging(store)
    jobs = {status: job_with_files(catalog, store, status) for status in JOB_STATES}
    (store.root / ".jobs" / "999").mkdir()

    report = doctor_json(ftc, "--min-age", "0")
    assert report["ok"] and report["checked"] == 1
    listed = {(x["what"], x["path"]): x for x in report["leftovers"]}
    root = store.root
    assert set(listed) == {
        ("orphan", str(root / orphan_uri)),
        ("staging", str(staging)),
        ("job", str(root / ".jobs" / str(jobs["failed"]))),
        ("job", str(root / ".jobs" / str(jobs["cancelled"]))),
        ("job", str(root / ".jobs" / str(jobs["succeeded"]))),
        ("job", str(root / ".jobs" / "999")),
    }
    assert listed[("job", str(root / ".jobs" / str(jobs["failed"])))]["size_bytes"] == 2048
    assert listed[("job", str(root / ".jobs" / "999"))]["reason"] == "job 999 is not in the catalog"
    assert listed[("orphan", str(root / orphan_uri))]["size_bytes"] > 4096  # with its manifest
    assert listed[("staging", str(staging))]["size_bytes"] == 1000
    text = ftc("doctor", "--min-age", "0").output
    assert f"orphan   {orphan_uri}" in text and "Run `ft doctor --repair` to remove them." in text

    out = ftc("doctor", "--repair", "--min-age", "0").output
    assert out.count("removed") == 6
    assert not (root / orphan_uri).exists() and not staging.exists()
    for status in ("failed", "cancelled", "succeeded"):
        assert not job_workdir(store, jobs[status]).exists()
    for status in ("queued", "running"):  # a job that may still run keeps its checkpoints
        assert (job_workdir(store, jobs[status]) / "checkpoints" / "step-3").is_dir()
    assert doctor_json(ftc, "--min-age", "0")["leftovers"] == []
    assert ftc("datasets", "show", "faults", "--json").exit_code == 0
    assert dataset_dir(store).is_dir()


def test_young_leftovers_are_reported_but_kept(ftc, catalog, store):
    orphan_uri = orphan(store)
    staging = killed_staging(store)
    failed = job_with_files(catalog, store, "failed")
    out = ftc("doctor", "--repair").output
    assert out.count("kept: younger than --min-age") == 2
    assert (store.root / orphan_uri).is_dir() and staging.is_dir()
    assert not job_workdir(store, failed).exists()  # a finished job's files have no age to wait for
    old = 1_000_000_000
    for path in [store.root / orphan_uri, *(store.root / orphan_uri).iterdir(), staging, *staging.iterdir()]:
        os.utime(path, (old, old))
    ftc("doctor", "--repair")
    assert not (store.root / orphan_uri).exists() and not staging.exists()


def test_every_kind_the_real_code_registers_is_referenced(
    catalog, settings, store, tiny_model_dir, tmp_path, ft
):
    from tests.worker.eval_helpers import evaluate, register_faults, train

    register_faults(catalog, store, tiny_model_dir, tmp_path)
    train(catalog, settings, store, "a1", "lora", {"rank": 4})
    evaluate(catalog, settings, store, adapters=["a1"], limit=2, max_new_tokens=2)
    report = doctor_json(ft, "--min-age", "0")
    kinds = sorted(p.name for p in store.root.iterdir() if not p.name.startswith("."))
    assert kinds == ["adapters", "conversions", "datasets", "predictions"]
    assert report["ok"] and report["checked"] == 4 and report["leftovers"] == []
