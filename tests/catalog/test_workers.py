"""The workers table on SQLite and PostgreSQL: register, heartbeat, stop, GPU claims (also when job
processes claim at once), and the pool view with alive / gone / stopped workers."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest

from catalog.errors import NotFound
from catalog.jobs import claim_job, finish_job
from catalog.models import Job, Worker, utcnow
from catalog.pool_view import list_workers
from catalog.workers import (
    GONE_AFTER_SECONDS,
    claim_gpu,
    free_gpu,
    heartbeat,
    mark_stopped,
    register_worker,
)
from tests.catalog.test_jobs import jobs_catalog, new_job  # noqa: F401  # the fixture, both backends

NAME = "ft-1@host-a"
GPUS = [
    {"index": i, "model": "NVIDIA H100 80GB HBM3", "class": "h100-80gb", "memory_bytes": 80 << 30}
    for i in range(2)
]


def register(catalog, name=NAME, gpus=GPUS) -> int:
    with catalog.session() as s:
        return register_worker(s, name, "host-a", 1, ["cpu", "gpu"], gpus).id


def running_job(catalog, worker_name=NAME) -> int:
    job_id = new_job(catalog)
    assert claim_job(catalog, job_id, f"{worker_name}:4242", 60) is not None
    return job_id


def pool(catalog, **kwargs):
    with catalog.session() as s:
        return list_workers(s, **kwargs)


def jobs_on_gpus(catalog) -> list[int | None]:
    (view,) = pool(catalog)
    return [g.job_id for g in view.gpus]


def test_register_then_list(jobs_catalog):  # noqa: F811
    register(jobs_catalog)
    (view,) = pool(jobs_catalog)
    assert (view.name, view.host, view.pid, view.state) == (NAME, "host-a", 1, "alive")
    assert view.queues == ["cpu", "gpu"]
    assert [(g.index, g.gpu_class, g.memory_bytes, g.job_id) for g in view.gpus] == [
        (0, "h100-80gb", 80 << 30, None),
        (1, "h100-80gb", 80 << 30, None),
    ]
    data = view.to_dict()
    assert data["alive"] is True and data["gpus"][0]["class"] == "h100-80gb"


def test_a_restarted_worker_of_the_same_name_takes_its_row_back(jobs_catalog):  # noqa: F811
    first = register(jobs_catalog)
    with jobs_catalog.session() as s:
        mark_stopped(s, first)
    again = register(jobs_catalog, gpus=GPUS[:1])
    assert again == first
    (view,) = pool(jobs_catalog)
    assert view.state == "alive" and view.stopped_at is None and len(view.gpus) == 1


def test_claims_take_free_gpus_and_free_gives_them_back(jobs_catalog):  # noqa: F811
    wid = register(jobs_catalog)
    a, b, c = (running_job(jobs_catalog) for _ in range(3))
    with jobs_catalog.session() as s:
        assert claim_gpu(s, wid, a) == 0
        assert claim_gpu(s, wid, b) == 1
        assert claim_gpu(s, wid, c) is None  # both busy
        assert claim_gpu(s, wid, c, index=0) is None
    assert jobs_on_gpus(jobs_catalog) == [a, b]
    (view,) = pool(jobs_catalog)
    assert view.gpus[0].submitted_by == "tester" and view.gpus[0].job_kind == "convert"
    with jobs_catalog.session() as s:
        free_gpu(s, wid, a)
        assert claim_gpu(s, wid, c) == 0
        with pytest.raises(NotFound, match="has no GPU 7"):
            claim_gpu(s, wid, c, index=7)
    assert jobs_on_gpus(jobs_catalog) == [c, b]


def test_a_gpu_whose_job_finished_is_free_and_take_over_claims_a_dead_one(jobs_catalog):  # noqa: F811
    wid = register(jobs_catalog)
    a, b, c = (running_job(jobs_catalog) for _ in range(3))
    with jobs_catalog.session() as s:
        assert claim_gpu(s, wid, a, index=1) == 1
    with jobs_catalog.session() as s:
        finish_job(s, a, f"{NAME}:4242", "failed", error="x")
    with jobs_catalog.session() as s:
        assert claim_gpu(s, wid, b, index=1) == 1  # a is over: its GPU is free
        assert claim_gpu(s, wid, c, index=1) is None
        assert claim_gpu(s, wid, c, index=1, take_over=True) == 1
    assert jobs_on_gpus(jobs_catalog) == [None, c]


def test_heartbeat_frees_gpus_of_jobs_that_no_longer_run_here(jobs_catalog):  # noqa: F811
    wid = register(jobs_catalog)
    a = running_job(jobs_catalog)
    elsewhere = running_job(jobs_catalog, worker_name="ft-2@host-b")  # now leased by another worker
    with jobs_catalog.session() as s:
        claim_gpu(s, wid, a, index=0)
        claim_gpu(s, wid, elsewhere, index=1, take_over=True)
        heartbeat(s, wid)
    assert jobs_on_gpus(jobs_catalog) == [a, None]
    with jobs_catalog.session() as s:
        finish_job(s, a, f"{NAME}:4242", "succeeded")
        heartbeat(s, wid)
    assert jobs_on_gpus(jobs_catalog) == [None, None]


def test_gone_and_stopped_workers_show_their_gpus_free(jobs_catalog):  # noqa: F811
    old = register(jobs_catalog, name="ft-old@host-a")
    stopped = register(jobs_catalog, name="ft-stop@host-a")
    live = register(jobs_catalog, name="ft-live@host-a")
    a, b = running_job(jobs_catalog, "ft-old@host-a"), running_job(jobs_catalog, "ft-stop@host-a")
    long_ago = utcnow() - dt.timedelta(seconds=GONE_AFTER_SECONDS + 5)
    with jobs_catalog.session() as s:
        claim_gpu(s, old, a)
        claim_gpu(s, stopped, b)
        heartbeat(s, old, now=long_ago)
        heartbeat(s, live)
        mark_stopped(s, stopped)
    views = pool(jobs_catalog)
    assert [(v.name, v.state) for v in views] == [
        ("ft-live@host-a", "alive"),
        ("ft-old@host-a", "gone"),
        ("ft-stop@host-a", "stopped"),
    ]
    assert all(g.job_id is None for v in views for g in v.gpus)
    assert [v.name for v in pool(jobs_catalog, include_stopped=False)] == ["ft-live@host-a", "ft-old@host-a"]
    assert [v.state for v in pool(jobs_catalog, gone_after=1e9)][:2] == ["alive", "alive"]
    with jobs_catalog.session() as s, pytest.raises(NotFound, match="no worker with id 99"):
        heartbeat(s, 99)


def test_racing_claims_never_share_a_gpu(jobs_catalog):  # noqa: F811
    gpus = [{**GPUS[0], "index": i} for i in range(4)]
    wid = register(jobs_catalog, gpus=gpus)
    job_ids = [running_job(jobs_catalog) for _ in range(6)]
    got: dict[int, int | None] = {}
    start = threading.Barrier(len(job_ids))

    def go(job_id: int) -> None:
        start.wait()
        with jobs_catalog.session() as s:
            got[job_id] = claim_gpu(s, wid, job_id)

    threads = [threading.Thread(target=go, args=(j,)) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [g for g in got.values() if g is not None]
    assert sorted(claimed) == [0, 1, 2, 3], got  # four claims succeed, on distinct GPUs; two find none
    assert sorted(j for j in jobs_on_gpus(jobs_catalog)) == sorted(j for j, g in got.items() if g is not None)


def test_heartbeat_records_gpu_readings_shown_only_while_the_worker_is_alive(jobs_catalog):  # noqa: F811
    worker_id = register(jobs_catalog)
    (view,) = pool(jobs_catalog)
    assert [(g.utilization, g.memory_used_bytes) for g in view.gpus] == [(None, None), (None, None)]
    with jobs_catalog.session() as s:  # GPU 1 gave no reading (e.g. fell off the bus): it keeps none
        heartbeat(s, worker_id, usage={0: {"utilization": 87, "memory_used_bytes": 61 << 30}})
    (view,) = pool(jobs_catalog)
    assert [(g.utilization, g.memory_used_bytes) for g in view.gpus] == [(87, 61 << 30), (None, None)]
    assert view.to_dict()["gpus"][0]["utilization"] == 87
    with jobs_catalog.session() as s:
        heartbeat(s, worker_id, usage={0: {"utilization": 3, "memory_used_bytes": 1 << 30}})
    (view,) = pool(jobs_catalog)
    assert view.gpus[0].utilization == 3  # the latest reading, not the first
    late = utcnow() + dt.timedelta(seconds=GONE_AFTER_SECONDS + 5)
    (view,) = pool(jobs_catalog, now=late)
    assert view.state == "gone" and view.gpus[0].utilization is None  # a stale reading says nothing


def test_the_pool_listing_shows_utilisation_and_memory_in_use(catalog, ft):
    from catalog.workers import heartbeat, register_worker

    with catalog.session() as s:
        worker = register_worker(s, NAME, "host-a", 1, ["gpu"], GPUS)
        heartbeat(s, worker.id, usage={1: {"utilization": 42, "memory_used_bytes": 20 << 30}})
    out = ft("workers", "list").output
    row = next(line for line in out.splitlines() if " 1 " in line and "h100-80gb" in line)
    assert "42%" in row and "20.0 GiB / 80.0 GiB" in row
    other = next(line for line in out.splitlines() if NAME in line)
    assert " - " in other  # GPU 0: no reading


MIXED = [
    {"index": 0, "model": "NVIDIA A10", "class": "a10-24gb", "memory_bytes": 24 << 30},
    {"index": 1, "model": "NVIDIA H100 80GB HBM3", "class": "h100-80gb", "memory_bytes": 80 << 30},
]


def test_a_need_for_a_class_or_memory_takes_only_gpus_that_fit(jobs_catalog):  # noqa: F811
    from catalog.workers import GpuNeed, claim_for

    worker_id = register(jobs_catalog, gpus=MIXED)
    first, second, third, fourth = (new_job(jobs_catalog) for _ in range(4))
    with jobs_catalog.session() as s:
        assert claim_for(s, worker_id, first, GpuNeed(1, gpu_class="h100-80gb"), prefer=0) == [1]
    with jobs_catalog.session() as s:  # the only fitting GPU is claimed: wait, saying for what
        why = claim_for(s, worker_id, second, GpuNeed(1, min_memory_bytes=40 << 30))
        assert why == f"waiting for 1 free GPU with at least 40 GiB on worker {NAME}"
        why = claim_for(s, worker_id, third, GpuNeed(2, gpu_class="a10-24gb"))
        assert why == f"needs 2 GPUs of class a10-24gb; worker {NAME} has 2 (a10-24gb, h100-80gb)"
        assert claim_for(s, worker_id, fourth, GpuNeed(1, gpu_class="a10-24gb")) == [0]


def test_the_per_user_cap_counts_gpus_across_workers(jobs_catalog):  # noqa: F811
    from catalog.workers import GpuNeed, claim_for

    a, b = register(jobs_catalog, "ft-1@a"), register(jobs_catalog, "ft-2@b")
    alice = [new_job(jobs_catalog) for _ in range(3)]
    with jobs_catalog.session() as s:
        for job_id in alice:
            s.get_one(Job, job_id).submitted_by = "alice"
    capped = GpuNeed(1, user="alice", user_cap=2)
    with jobs_catalog.session() as s:
        assert claim_for(s, a, alice[0], capped) == [0]
    with jobs_catalog.session() as s:
        assert claim_for(s, b, alice[1], capped) == [0]  # another worker: the cap is the pool's
    with jobs_catalog.session() as s:
        assert (
            claim_for(s, a, alice[2], capped) == "alice holds 2 GPU(s) of the pool; FT_MAX_GPUS_PER_USER is 2"
        )
    bob = new_job(jobs_catalog)
    with jobs_catalog.session() as s:  # bob is not alice
        assert claim_for(s, a, bob, GpuNeed(1, user="bob", user_cap=2)) == [1]
    with jobs_catalog.session() as s:
        free_gpu(s, b, alice[1])
    with jobs_catalog.session() as s:
        assert claim_for(s, b, alice[2], capped) == [0]


def test_racing_claims_of_one_user_never_pass_the_cap(jobs_catalog):  # noqa: F811
    from catalog.workers import GpuNeed, claim_for

    ids = [register(jobs_catalog, f"ft-{n}@h{n}", gpus=GPUS) for n in range(3)]  # 6 GPUs in all
    jobs = [new_job(jobs_catalog) for _ in range(6)]
    with jobs_catalog.session() as s:
        for job_id in jobs:
            s.get_one(Job, job_id).submitted_by = "alice"
    got, errors = [], []

    def claim(worker_id: int, job_id: int) -> None:
        try:
            with jobs_catalog.session() as s:
                result = claim_for(s, worker_id, job_id, GpuNeed(1, user="alice", user_cap=3))
            got.append(result)
        except Exception as exc:  # a serialisation failure would be a bug of the lock
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(ids[i % 3], j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(isinstance(r, list) for r in got) == 3 and len(got) == 6


def test_prune_removes_long_stopped_and_long_gone_workers_only(jobs_catalog):  # noqa: F811
    from catalog.pool_view import prune_workers

    now = utcnow()
    names = ["ft-live@h", "ft-slow@h", "ft-gone@h", "ft-stopped@h", "ft-just-stopped@h"]
    ids = {n: register(jobs_catalog, name=n) for n in names}
    with jobs_catalog.session() as s:
        heartbeat(s, ids["ft-slow@h"], now=now - dt.timedelta(seconds=GONE_AFTER_SECONDS / 2))
        heartbeat(s, ids["ft-gone@h"], now=now - dt.timedelta(hours=3))
        mark_stopped(s, ids["ft-stopped@h"])
        mark_stopped(s, ids["ft-just-stopped@h"])
    with jobs_catalog.session() as s:  # the first stopped two hours ago
        s.get_one(Worker, ids["ft-stopped@h"]).stopped_at = now - dt.timedelta(hours=2)
    with jobs_catalog.session() as s:
        assert prune_workers(s, 3600, now=now, remove=False) == ["ft-gone@h", "ft-stopped@h"]
    assert len(pool(jobs_catalog)) == 5  # only found
    with jobs_catalog.session() as s:
        assert prune_workers(s, 3600, now=now) == ["ft-gone@h", "ft-stopped@h"]
    assert sorted(v.name for v in pool(jobs_catalog)) == ["ft-just-stopped@h", "ft-live@h", "ft-slow@h"]
    with jobs_catalog.session() as s:  # 0: every stopped worker, but a slow heartbeat is not gone
        assert prune_workers(s, 0, now=now + dt.timedelta(seconds=1)) == ["ft-just-stopped@h"]
    assert sorted(v.name for v in pool(jobs_catalog)) == ["ft-live@h", "ft-slow@h"]


def test_ft_workers_prune(catalog, ft):
    with catalog.session() as s:
        gone = register_worker(s, "ft-gone@h", "h", 1, ["gpu"], GPUS)
        heartbeat(s, gone.id, now=utcnow() - dt.timedelta(days=2))
        register_worker(s, "ft-live@h", "h", 2, ["gpu"], GPUS)
    out = ft("workers", "prune", "--dry-run").output
    assert out.strip() == "would remove 1 worker(s): ft-gone@h"
    assert json.loads(ft("workers", "prune", "--json").output) == {
        "removed": ["ft-gone@h"],
        "would_remove": [],
    }
    assert "ft-gone@h" not in ft("workers", "list").output
    bad = ft("workers", "prune", "--older-than", "soon", ok=False)
    assert bad.exit_code != 0 and "--older-than: 'soon' is not a duration" in bad.output


def test_a_worker_pruned_while_away_registers_again_under_its_id(jobs_catalog):  # noqa: F811
    """Its job processes know the worker by id, so it comes back as the same row."""
    import time

    from catalog.pool_view import prune_workers
    from worker.jobs.gpus import Gpu
    from worker.jobs.pool import WorkerPresence

    gpus = [Gpu(0, "NVIDIA H100 80GB HBM3", 80 << 30)]
    with WorkerPresence(jobs_catalog, "ft-away@h", "h", ["gpu"], gpus, interval=0.05) as presence:
        first = presence.worker_id
        with jobs_catalog.session() as s:  # seen from a day later, it has been gone for a day
            assert prune_workers(s, 3600, now=utcnow() + dt.timedelta(days=1)) == ["ft-away@h"]
        for _ in range(600):  # the next heartbeat finds no row and registers again
            views = pool(jobs_catalog)
            if views:
                break
            time.sleep(0.05)
        assert [(v.id, v.name, v.state) for v in views] == [(first, "ft-away@h", "alive")]
        assert presence.worker_id == first
    assert [v.state for v in pool(jobs_catalog)] == ["stopped"]
