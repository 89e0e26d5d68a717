"""Items 3-6 of issue 14 with real `ft worker` processes and the tiny model: a job process SIGKILLed
mid-run is given back at once and resumes from its last complete checkpoint; a job killed on every
attempt (a poison job) fails naming the signal while the other jobs on that worker succeed; `ft jobs
cancel` of a running and of a queued job; a job that outlives a short Redis visibility timeout runs
once (the lease fences the second copy). The test plays the OOM killer; nothing is mocked."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import pytest

from catalog.adapters import list_adapters
from catalog.jobs import get_job
from tests.worker.jobs import test_train_job
from tests.worker.jobs.test_queue_integration import SUBMIT
from tests.worker.jobs.test_train_job import submit_train
from tests.worker.procs import Workers, run_ft, subprocess_env
from worker.jobs.celery_app import make_celery
from worker.jobs.messages import send_job

trainable = test_train_job.trainable  # the fixture: `faults` (24 rows) and the tiny model `tiny`

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(400)]

LONG = {"batch_size": 1, "grad_accum": 1, "epochs": 1000}
"""A training job that runs until it is stopped (max_steps set per test)."""


def load(catalog, job_id: int):
    with catalog.session() as s:
        return get_job(s, job_id)


def start_train(catalog, settings, name: str, *, max_attempts: int = 3, **train) -> int:
    job_id = submit_train(catalog, settings, name, "lora", {"rank": 4}, **{**LONG, **train})
    with catalog.session() as s:
        get_job(s, job_id).max_attempts = max_attempts
    send_job(make_celery(settings), job_id, queue="gpu", priority=0)
    return job_id


def wait_for(catalog, job_id: int, workers: Workers, done, timeout: float = 240):
    """Poll the job row until `done(job)`; fail with the workers' output if it ends first."""
    deadline = time.monotonic() + timeout
    while True:
        job = load(catalog, job_id)
        if done(job):
            return job
        assert job.status in ("queued", "running"), (
            f"job {job_id} {job.status}: {job.error}\n" + workers.dump()
        )
        assert time.monotonic() < deadline, workers.dump()
        time.sleep(0.1)


def wait_finished(catalog, job_id: int, workers: Workers, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while (job := load(catalog, job_id)).status in ("queued", "running"):
        assert time.monotonic() < deadline, workers.dump()
        time.sleep(0.2)
    return job


def complete_checkpoints(settings, job_id: int) -> list[int]:
    root = settings.artifacts / ".jobs" / str(job_id) / "checkpoints"
    found = root.glob("step-*") if root.exists() else []
    return sorted(int(p.name.split("-")[1]) for p in found if (p / "COMPLETE").exists())


def kill_job_process(job) -> int:
    """SIGKILL the pool process holding the job's lease (its owner is `worker-name:pid`)."""
    pid = int(job.lease_owner.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_killed_job_process_is_given_back_at_once_and_resumes_from_its_checkpoint(
    trainable,
    settings,
    workers,
):
    env = subprocess_env(FT_LEASE_SECONDS="600")  # only the give-back can requeue it within the test
    worker = workers.start(env, "--queues", "cpu,gpu")
    job_id = start_train(trainable, settings, "faults-killed", max_steps=400, save_steps=10)
    first = wait_for(
        trainable, job_id, workers, lambda j: j.status == "running" and complete_checkpoints(settings, job_id)
    )
    saved = complete_checkpoints(settings, job_id)[-1]
    kill_job_process(first)

    job = wait_finished(trainable, job_id, workers)
    assert job.status == "succeeded", (job.error or "") + workers.dump()
    assert job.attempts == 2 and job.result["steps"] == 400
    assert job.result["resumed_from"] is not None and job.result["resumed_from"] >= saved, job.result
    # Re-claimed by the re-delivered message, long before the dead process's lease would have run out.
    assert job.started_at < first.lease_expires_at - (first.lease_expires_at - first.started_at) / 2
    log = worker.log.read_text()
    assert f"job {job_id}: its process was killed by signal 9 (SIGKILL); queued" in log
    assert "re-queued" not in log  # not the reconciler's lease-expiry path
    with trainable.session() as s:
        assert [a.name for a in list_adapters(s)] == ["faults-killed"]


def test_a_poison_job_killed_every_attempt_fails_naming_the_signal_and_the_others_succeed(
    trainable,
    settings,
    workers,
):
    env = subprocess_env(FT_LEASE_SECONDS="600")
    worker = workers.start(env, "--queues", "cpu,gpu")
    poison = start_train(trainable, settings, "faults-poison", max_steps=100000, save_steps=100000)
    others = []
    for n in range(3):
        submitted = run_ft(env, *SUBMIT, "--max-len", str(192 + 16 * n))
        assert submitted.returncode == 0, submitted.stderr
        others.append(int(submitted.stdout))

    killed: set[str] = set()
    deadline = time.monotonic() + 300
    while True:
        job = load(trainable, poison)
        rest = [load(trainable, i) for i in others]
        if job.status not in ("queued", "running") and all(
            r.status not in ("queued", "running") for r in rest
        ):
            break
        if job.status == "running" and job.lease_owner and job.lease_owner not in killed:
            killed.add(job.lease_owner)
            kill_job_process(job)
        assert time.monotonic() < deadline, workers.dump()
        time.sleep(0.1)

    assert job.status == "failed" and job.attempts == 3 and len(killed) == 3, workers.dump()
    assert job.error == "the job process was killed by signal 9 (SIGKILL); gave up after 3 attempts"
    assert [(r.status, r.attempts) for r in rest] == [("succeeded", 1)] * 3, workers.dump()
    assert worker.poll() is None  # the worker itself kept serving
    shown = run_ft(env, "jobs", "show", str(poison))
    assert "killed by signal 9 (SIGKILL)" in shown.stdout and "stopped responding" not in shown.stdout


def test_cancel_a_running_and_a_queued_job(trainable, settings, workers):
    env = subprocess_env()
    worker = workers.start(env, "--queues", "cpu,gpu")
    running = start_train(trainable, settings, "faults-cancel", max_steps=100000, save_steps=5)
    wait_for(
        trainable,
        running,
        workers,
        lambda j: j.status == "running" and complete_checkpoints(settings, running),
    )
    asked = run_ft(env, "jobs", "cancel", str(running))
    assert asked.returncode == 0 and "cancellation requested" in asked.stdout, asked.stderr
    job = wait_finished(trainable, running, workers)
    assert job.status == "cancelled" and job.error == "cancelled on request", job.error
    assert 0 < job.progress["step"] < 100000
    assert "cancellation requested; asking the handler to stop" in open(job.log_path, encoding="utf-8").read()

    queued = submit_train(
        trainable, settings, "faults-cancel-queued", "lora", {"rank": 4}, **LONG, max_steps=50
    )
    said = run_ft(env, "jobs", "cancel", str(queued))
    assert said.returncode == 0 and said.stdout.strip() == f"job {queued} cancelled", said.stderr
    send_job(make_celery(settings), queued, queue="gpu", priority=0)  # a message still on its way
    deadline = time.monotonic() + 120
    while f"job {queued} is not claimable" not in worker.log.read_text():
        assert time.monotonic() < deadline, workers.dump()
        time.sleep(0.2)

    for job_id in (running, queued):
        job = load(trainable, job_id)
        assert job.status == "cancelled" and job.result == {}
        assert not (settings.artifacts / ".jobs" / str(job_id)).exists()  # workdir and checkpoints
    assert load(trainable, queued).attempts == 0  # never ran
    staging = settings.artifacts / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    with trainable.session() as s:
        assert list_adapters(s) == []


def test_a_job_longer_than_the_visibility_timeout_runs_once(trainable, settings, workers, redis_url):
    import redis

    url = f"{redis_url.rsplit('/', 1)[0]}/14"  # a database of its own
    redis.Redis.from_url(url).flushdb()
    env = subprocess_env(FT_BROKER_URL=url, FT_BROKER_VISIBILITY_TIMEOUT="2")
    worker = workers.start(env, "--queues", "cpu,gpu", "--concurrency", "2")
    job_id = start_train(
        trainable, replace(settings, broker_url=url), "faults-vt", max_steps=60, save_steps=50
    )
    # Redis hands the unacknowledged message out again after 2 s, while the job still runs: the
    # second pool process finds the lease held and drops that copy.
    wait_for(trainable, job_id, workers, lambda j: f"job {job_id} is not claimable" in worker.log.read_text())
    job = wait_finished(trainable, job_id, workers)
    assert job.status == "succeeded" and job.attempts == 1, (job.error or "") + workers.dump()
    log = open(job.log_path, encoding="utf-8").read()
    assert log.count("attempt 1/3") == 1 and "attempt 2/3" not in log
    with trainable.session() as s:
        assert [a.name for a in list_adapters(s)] == ["faults-vt"]
