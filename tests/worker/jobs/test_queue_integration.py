"""The whole queue with real `ft worker` processes: submit -> broker -> worker -> catalog, on the
embedded SQLite broker and on a real Redis; priorities on Redis; a worker killed mid-job whose job
is re-queued and finished by another worker. Every worker is stopped (SIGTERM, then SIGKILL of its
whole process group) however the test ends."""

from __future__ import annotations

import itertools
import subprocess
import time

import pytest

from catalog.jobs import get_job
from tests.conftest import FAULTS_TEST
from tests.worker.procs import FT, Workers, run_ft, subprocess_env

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

SUBMIT = ["submit", "convert", "faults", "--model", "tiny", "--template", "plain"]
_redis_dbs = itertools.count(1)


@pytest.fixture
def home(ft, catalog, store, tiny_model_dir):
    """An initialised FT_HOME with `faults` (the 50-row test set) and the tiny model `tiny`."""
    from datasets_prep.register import add_dataset

    add_dataset(catalog, store, "faults", FAULTS_TEST, user="tester")
    ft("models", "add", "tiny", "--path", str(tiny_model_dir))
    return catalog


def load(catalog, job_id: int):
    with catalog.session() as s:
        return get_job(s, job_id)


def check_submit_wait_then_cache_hit(env: dict[str, str], job_id: int, workers: Workers) -> None:
    first = run_ft(env, *SUBMIT, "--wait")
    assert first.returncode == 0, first.stderr + workers.dump()
    assert first.stdout.startswith(f"job {job_id} succeeded: conversion_id ")
    assert "running" in first.stderr  # progress was followed on stderr
    again = run_ft(env, *SUBMIT)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("cache hit: conversion ")


def test_convert_on_the_embedded_sqlite_broker(home, workers):
    env = subprocess_env()
    worker = workers.start(env)

    check_submit_wait_then_cache_hit(env, 1, workers)

    assert workers.stop(worker) == 0  # SIGTERM: a clean, warm shutdown
    log = worker.log.read_text()
    assert "queues cpu, concurrency 1, broker sqla+sqlite:///" in log and "stopped" in log


def test_convert_on_redis_with_priorities(home, workers, redis_url):
    import redis

    url = f"{redis_url.rsplit('/', 1)[0]}/{next(_redis_dbs)}"  # a database of its own
    redis.Redis.from_url(url).flushdb()
    env = subprocess_env(FT_BROKER_URL=url)
    low = run_ft(env, *SUBMIT, "--max-len", "256")  # priority 0, sent first
    assert low.returncode == 0, low.stderr
    high = subprocess.Popen(
        [*FT, *SUBMIT, "--priority", "9", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while count_jobs(home) != 2:  # both are queued before any worker runs
            assert high.poll() is None and time.monotonic() < deadline, high.communicate()
            time.sleep(0.1)
        workers.start(env, "--queues", "cpu,gpu")
        out, err = high.communicate(timeout=120)
    finally:
        high.kill()
    assert high.returncode == 0, err + workers.dump()
    assert out.startswith("job 2 succeeded: conversion_id ") and "running" in err
    waited = run_ft(env, "jobs", "wait", "1", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr + workers.dump()
    assert load(home, 2).started_at < load(home, 1).started_at  # priority 9 ran first though sent second

    again = run_ft(env, *SUBMIT)
    assert again.returncode == 0 and again.stdout.startswith("cache hit: conversion "), again.stderr
    assert workers.stop(workers.procs[0]) == 0


def count_jobs(catalog) -> int:
    from catalog.jobs import list_jobs

    with catalog.session() as s:
        return len(list_jobs(s))


def test_a_killed_worker_leaves_a_job_another_worker_finishes(home, workers):
    env = subprocess_env(FT_LEASE_SECONDS="3")
    first = workers.start(env)
    for max_len in (256, 320, 384):  # a fresh spec per try, in case a job finished before the kill
        submitted = run_ft(env, *SUBMIT, "--max-len", str(max_len))
        assert submitted.returncode == 0, submitted.stderr
        job_id = int(submitted.stdout)
        deadline = time.monotonic() + 60
        while load(home, job_id).status == "queued":
            assert time.monotonic() < deadline, "the first worker never claimed the job\n" + workers.dump()
            time.sleep(0.02)
        workers.kill(first)  # SIGKILL to the worker and its pool children, mid-job
        if load(home, job_id).status == "running":
            break
        first = workers.start(env)
    else:
        pytest.fail("every job finished before its worker could be killed")

    second = workers.start(env)
    waited = run_ft(env, "jobs", "wait", str(job_id), "--timeout", "90")
    assert waited.returncode == 0, waited.stderr + workers.dump()

    job = load(home, job_id)
    assert job.status == "succeeded" and job.attempts == 2
    assert job.lease_owner.startswith("ft-") and str(second.pid) in job.lease_owner
    assert f"job {job_id}: its worker stopped renewing the lease; re-queued" in second.log.read_text()
    log = run_ft(env, "jobs", "logs", str(job_id)).stdout
    assert "attempt 1/3" in log and "attempt 2/3" in log
    assert workers.stop(second) == 0
