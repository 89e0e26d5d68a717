"""`--gpus 2` train jobs through a real `ft worker` with two declared GPUs (FT_FAKE_GPUS): the job
claims both GPUs together and trains in two torchrun processes (gloo on this CPU); a one-GPU job sent
meanwhile waits, says why, and runs once they are free; a rank SIGKILLed mid-run fails the attempt,
and the job resumes from its last complete checkpoint and registers one adapter. Nothing is mocked:
the fake GPUs stand in for real ones in scheduling only."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from catalog.adapters import list_adapters
from catalog.pool_view import list_workers
from tests.worker.jobs import test_train_job
from tests.worker.jobs.test_chaos_jobs import complete_checkpoints, start_train, wait_finished, wait_for
from tests.worker.procs import Workers, run_ft, subprocess_env

trainable = test_train_job.trainable  # the fixture: `faults` (24 rows) and the tiny model `tiny`

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(400)]


def two_gpus() -> dict[str, str]:
    """The environment of a worker (and of `ft` commands) on a host with two declared GPUs."""
    return subprocess_env(FT_FAKE_GPUS="2x24GiB@H100")


def gpus_of(catalog, job_id: int) -> list[int]:
    with catalog.session() as s:
        return [g.index for view in list_workers(s) for g in view.gpus if g.job_id == job_id]


def test_a_two_gpu_job_holds_both_gpus_and_a_one_gpu_job_waits_for_one(trainable, settings, workers: Workers):
    env = two_gpus()
    worker = workers.start(env, "--queues", "cpu,gpu", "--gpus", "all")
    gang = start_train(trainable, settings, "faults-gang", gpus=2, grad_accum=2, max_steps=120, save_steps=50)
    wait_for(trainable, gang, workers, lambda j: j.status == "running" and len(gpus_of(trainable, gang)) == 2)
    single = start_train(trainable, settings, "faults-single", max_steps=3)
    waiting = wait_for(
        trainable,
        single,
        workers,
        lambda j: (j.progress or {}).get("stage") == "waiting" or j.status != "queued",
    )
    assert waiting.status == "queued", "the one-GPU job started while both GPUs were held"
    assert waiting.progress["why"].startswith("waiting for 1 free GPU on worker")
    shown = run_ft(env, "jobs", "list")
    assert "waiting for 1 free GPU" in shown.stdout, shown.stdout

    first = wait_finished(trainable, gang, workers)
    assert first.status == "succeeded", (first.error or "") + workers.dump()
    second = wait_finished(trainable, single, workers)
    assert second.status == "succeeded", (second.error or "") + workers.dump()
    assert second.started_at >= first.finished_at  # it never ran beside the gang
    assert first.result["steps"] == 120
    log = run_ft(env, "jobs", "logs", str(gang)).stdout
    assert f"job {gang} on GPU 0,1 (CUDA_VISIBLE_DEVICES=0,1)" in log
    assert "starting 2 training processes" in log and "rank 0: " in log
    with trainable.session() as s:
        adapters = {a.name: a for a in list_adapters(s)}
    assert adapters.keys() == {"faults-gang", "faults-single"}
    assert adapters["faults-gang"].metrics["gpus"] == 2 and adapters["faults-single"].metrics["gpus"] == 1
    assert gpus_of(trainable, gang) == [] and gpus_of(trainable, single) == []  # all free again
    assert workers.stop(worker) == 0


def rank_pids(settings, job_id: int) -> list[int]:
    """The training processes of job `job_id` (torchrun's children, not the torchrun agent), told apart
    from any other test's by the job's own run directory in their arguments."""
    run_dir = str(settings.artifacts / ".jobs" / str(job_id) / "run").encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.jobs.rank" in args and run_dir in args and b"torch.distributed.run" not in args:
            found.append(int(proc.name))
    return sorted(found)


def test_a_killed_rank_fails_the_attempt_and_the_job_resumes_from_its_checkpoint(
    trainable, settings, workers: Workers
):
    env = two_gpus()
    workers.start(env, "--queues", "cpu,gpu", "--gpus", "all")
    job_id = start_train(
        trainable, settings, "faults-rank-killed", gpus=2, grad_accum=2, max_steps=400, save_steps=10
    )
    wait_for(
        trainable, job_id, workers, lambda j: j.status == "running" and complete_checkpoints(settings, job_id)
    )
    saved = complete_checkpoints(settings, job_id)[-1]
    pids = rank_pids(settings, job_id)
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGKILL)

    requeued = wait_for(
        trainable, job_id, workers, lambda j: j.attempts >= 2 or j.status != "running", timeout=120
    )
    job = wait_finished(trainable, job_id, workers)
    assert job.status == "succeeded", (job.error or "") + workers.dump()
    assert job.attempts == 2 and job.result["steps"] == 400, job.result
    assert job.result["resumed_from"] is not None and job.result["resumed_from"] >= saved, job.result
    log = run_ft(env, "jobs", "logs", str(job_id)).stdout
    assert f"job {job_id} re-queued: a training process of the 2-GPU job failed (rank" in log, log[-3000:]
    assert "was killed by signal 9 (SIGKILL))" in log
    with trainable.session() as s:
        assert [a.name for a in list_adapters(s)] == ["faults-rank-killed"]
    # seen between the attempts (queued again, saying why) or already in the second one
    assert requeued.attempts >= 2 or (requeued.status == "queued" and requeued.error.endswith("; re-queued"))


def test_a_two_gpu_full_job_is_sharded_and_registers_a_whole_model(trainable, settings, workers: Workers):
    """`--method full --gpus 2`: FSDP over the two ranks (worker/train/sharding.py); rank 0 writes the
    gathered weights as an ordinary model directory that loads on its own and differs from the base."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from catalog.store import ArtifactStore
    from tests.worker.jobs.test_train_job import submit_train
    from worker.jobs.celery_app import make_celery
    from worker.jobs.messages import send_job
    from worker.models.directories import model_dir

    env = two_gpus()
    worker = workers.start(env, "--queues", "cpu,gpu", "--gpus", "all")
    job_id = submit_train(
        trainable, settings, "faults-full", "full", {}, gpus=2, batch_size=2, grad_accum=2, max_steps=4,
        save_steps=2, lr=1e-4,
    )  # fmt: skip
    send_job(make_celery(settings), job_id, queue="gpu", priority=0)
    job = wait_finished(trainable, job_id, workers)
    assert job.status == "succeeded", (job.error or "") + workers.dump()
    log = run_ft(env, "jobs", "logs", str(job_id)).stdout
    assert "sharding the model over 2 ranks (FSDP)" in log, log
    with trainable.session() as s:
        (adapter,) = [a for a in list_adapters(s) if a.name == "faults-full"]
        store = ArtifactStore(settings.artifacts)
        base_path, artifact = model_dir(store, adapter.base_model), store.path(adapter.artifact_uri)
    assert adapter.method == "full" and adapter.metrics["gpus"] == 2
    model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    trained, original = model.state_dict(), base.state_dict()
    assert trained.keys() == original.keys()
    assert any(not torch.equal(trained[k], original[k]) for k in trained)  # it trained, and was saved whole
    assert set(load_file(artifact / "model.safetensors")) >= {k for k in trained if "layers.1." in k}
    assert workers.stop(worker) == 0
