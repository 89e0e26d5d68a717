"""A real `ft worker` with two declared GPUs (FT_FAKE_GPUS): it registers itself, runs two jobs at
once each in a process of its own with its own CUDA_VISIBLE_DEVICES (written in each job's log),
shows in `ft workers list --json` / `ft pool` while it runs, and as stopped once stopped."""

from __future__ import annotations

import json
import re
import time

import pytest

from catalog.pool_view import listening
from tests.worker.jobs.test_queue_integration import SUBMIT, home, load  # noqa: F401  # fixture
from tests.worker.procs import Workers, run_ft, subprocess_env

pytestmark = [pytest.mark.services, pytest.mark.timeout(240)]


def pool(env: dict[str, str]) -> list[dict]:
    listed = run_ft(env, "workers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_each_job_gets_its_own_gpu_and_the_pool_shows_the_worker(home, workers: Workers):  # noqa: F811
    env = subprocess_env(FT_FAKE_GPUS="2x24GiB@H100")
    job_ids = []
    for max_len in (256, 320):  # queued before the worker starts: it takes both at once
        submitted = run_ft(env, *SUBMIT, "--max-len", str(max_len))
        assert submitted.returncode == 0, submitted.stderr
        assert "warning: no running worker takes queue 'cpu'" in submitted.stderr  # it would wait
        job_ids.append(int(submitted.stdout))

    worker = workers.start(env, "--queues", "cpu", "--gpus", "all")  # concurrency: one per GPU
    started = worker.log.read_text()
    assert "concurrency 2," in started and "gpus 0:h100-24gb, 1:h100-24gb" in started
    (view,) = pool(env)
    assert view["state"] == "alive" and view["alive"] and view["queues"] == ["cpu"]
    assert str(worker.pid) in view["name"] and view["pid"] == worker.pid
    with home.session() as s:
        assert listening(s, "cpu") and not listening(s, "gpu")  # what `ft submit` warns from
    assert [(g["index"], g["class"], g["memory_bytes"]) for g in view["gpus"]] == [
        (0, "h100-24gb", 24 << 30),
        (1, "h100-24gb", 24 << 30),
    ]

    seen = watch_gpus(home, job_ids)
    for job_id in job_ids:
        waited = run_ft(env, "jobs", "wait", str(job_id), "--timeout", "120")
        assert waited.returncode == 0, waited.stderr + workers.dump()
    gpus = []
    for job_id in job_ids:
        log = run_ft(env, "jobs", "logs", str(job_id)).stdout
        found = re.search(rf"job {job_id} on GPU (\d+) \(CUDA_VISIBLE_DEVICES=(\d+)\)", log)
        assert found, log
        gpus.append(int(found.group(1)))
    first, second = (load(home, j) for j in job_ids)
    # the heartbeat frees GPUs of jobs not leased by this worker: its job processes' owners carry its name
    assert all(j.lease_owner.startswith(view["name"] + ":") for j in (first, second))
    assert first.started_at < second.finished_at and second.started_at < first.finished_at, "not at once"
    assert sorted(gpus) == [0, 1], gpus  # two jobs at once never share a GPU
    assert seen == dict(zip(gpus, job_ids, strict=True)), seen  # the catalog knew which ran where

    (view,) = pool(env)
    assert [g["job_id"] for g in view["gpus"]] == [None, None]  # both finished: the GPUs are free again
    table = run_ft(env, "pool")
    assert table.returncode == 0 and view["name"] in table.stdout and "h100-24gb" in table.stdout

    assert workers.stop(worker) == 0
    (view,) = pool(env)
    assert view["state"] == "stopped" and not view["alive"] and view["stopped_at"]
    assert pool_running(env) == []


def watch_gpus(catalog, job_ids: list[int], timeout: float = 120) -> dict[int, int]:
    """{GPU index: job id} as the worker's row recorded them while the jobs ran."""
    from catalog.pool_view import list_workers

    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while any(load(catalog, j).status in ("queued", "running") for j in job_ids):
        assert time.monotonic() < deadline, "the jobs did not finish"
        with catalog.session() as s:
            for view in list_workers(s):
                seen.update({g.index: g.job_id for g in view.gpus if g.job_id is not None})
        time.sleep(0.02)
    return seen


def pool_running(env: dict[str, str]) -> list[dict]:
    listed = run_ft(env, "workers", "list", "--running", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_a_bad_fake_gpus_value_is_one_line(home):  # noqa: F811
    result = run_ft(subprocess_env(FT_FAKE_GPUS="2x24"), "worker", "--queues", "cpu")
    assert result.returncode == 2
    assert "FT_FAKE_GPUS: cannot read '2x24'" in result.stderr and "Traceback" not in result.stderr
    result = run_ft(subprocess_env(FT_FAKE_GPUS="1x24GiB"), "worker", "--gpus", "0,1")
    assert result.returncode == 2 and "--gpus: no GPU 1 on this machine (found: 0;" in result.stderr
