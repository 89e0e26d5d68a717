"""The job state machine (catalog.jobs), on the embedded SQLite catalog and on a real PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from catalog.db import Catalog
from catalog.errors import Conflict, InvalidInput, NotFound
from catalog.jobs import (
    LeaseLost,
    claim_job,
    create_job,
    finish_job,
    get_job,
    heartbeat,
    list_jobs,
    release_job,
    request_cancel,
    requeue_expired,
    retry_job,
    spec_hash,
)
from catalog.migrate import upgrade
from catalog.settings import Settings

LEASE = 60


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def jobs_catalog(request, tmp_path):
    env = {"FT_HOME": str(tmp_path / "home"), "FT_USER": "tester"}
    if request.param == "postgres":
        env["FT_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    cat = Catalog(Settings.from_env(env))
    upgrade(cat.engine)
    yield cat
    cat.dispose()


def new_job(catalog: Catalog, user: str = "tester", **kwargs) -> int:
    with catalog.session() as s:
        return create_job(s, "convert", {"n": 1}, user, **kwargs).id


def load(catalog: Catalog, job_id: int):
    with catalog.session() as s:
        return get_job(s, job_id)


def expire_now(catalog: Catalog, job_id: int, owner: str) -> None:
    """Claim with a lease that is already over (a worker that stopped at once)."""
    assert claim_job(catalog, job_id, owner, lease_seconds=0) is not None
    time.sleep(0.01)


def test_create_and_get(jobs_catalog):
    with jobs_catalog.session() as s:
        job = create_job(s, "convert", {"b": 2, "a": 1}, "tester", queue="gpu", priority=7, logs_dir="/logs")
    assert job.status == "queued" and job.attempts == 0 and job.queue == "gpu" and job.priority == 7
    assert job.spec_hash == spec_hash({"a": 1, "b": 2})
    assert job.log_path == f"/logs/job-{job.id}.log"
    assert load(jobs_catalog, job.id).spec == {"a": 1, "b": 2}
    with pytest.raises(NotFound, match="no job 999"), jobs_catalog.session() as s:
        get_job(s, 999)


@pytest.mark.parametrize("kind, priority, match", [("bake", 0, "kind"), ("convert", 10, "--priority")])
def test_create_refuses_bad_input(jobs_catalog, kind, priority, match):
    with pytest.raises(InvalidInput, match=match), jobs_catalog.session() as s:
        create_job(s, kind, {}, "tester", priority=priority)


def test_list_filters(jobs_catalog):
    a = new_job(jobs_catalog, "ann")
    b = new_job(jobs_catalog, "bob")
    claim_job(jobs_catalog, b, "w", LEASE)
    with jobs_catalog.session() as s:
        assert [j.id for j in list_jobs(s)] == [b, a]
        assert [j.id for j in list_jobs(s, user="ann")] == [a]
        assert [j.id for j in list_jobs(s, status="running")] == [b]
        assert list_jobs(s, kind="train") == []
        assert len(list_jobs(s, limit=1)) == 1
        with pytest.raises(InvalidInput, match="--status"):
            list_jobs(s, status="sleeping")


def test_claim_is_exclusive(jobs_catalog):
    job_id = new_job(jobs_catalog)
    barrier = threading.Barrier(6)
    won: list[str] = []

    def worker(owner: str) -> None:
        barrier.wait()
        if claim_job(jobs_catalog, job_id, owner, LEASE) is not None:
            won.append(owner)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1
    job = load(jobs_catalog, job_id)
    assert job.status == "running" and job.lease_owner == won[0] and job.attempts == 1
    assert claim_job(jobs_catalog, job_id, "late", LEASE) is None


def test_expired_lease_is_reclaimed_and_the_old_owner_is_locked_out(jobs_catalog):
    job_id = new_job(jobs_catalog)
    expire_now(jobs_catalog, job_id, "w1")
    job = claim_job(jobs_catalog, job_id, "w2", LEASE)
    assert job is not None and job.lease_owner == "w2" and job.attempts == 2
    with pytest.raises(LeaseLost):
        heartbeat(jobs_catalog, job_id, "w1", LEASE, {"step": 1})
    with pytest.raises(LeaseLost), jobs_catalog.session() as s:
        finish_job(s, job_id, "w1", "succeeded")
    assert heartbeat(jobs_catalog, job_id, "w2", LEASE, {"step": 5}) is False
    assert load(jobs_catalog, job_id).progress == {"step": 5}
    with jobs_catalog.session() as s:
        finish_job(s, job_id, "w2", "succeeded", result={"x": 1})
    job = load(jobs_catalog, job_id)
    assert job.status == "succeeded" and job.result == {"x": 1} and job.lease_expires_at is None


def test_heartbeat_renews_the_lease(jobs_catalog):
    job_id = new_job(jobs_catalog)
    first = claim_job(jobs_catalog, job_id, "w1", 5).lease_expires_at
    heartbeat(jobs_catalog, job_id, "w1", LEASE)
    assert load(jobs_catalog, job_id).lease_expires_at > first
    assert claim_job(jobs_catalog, job_id, "w2", LEASE) is None


def test_finish_is_guarded(jobs_catalog):
    job_id = new_job(jobs_catalog)
    with pytest.raises(LeaseLost), jobs_catalog.session() as s:  # queued: nobody holds it
        finish_job(s, job_id, "w1", "succeeded")
    claim_job(jobs_catalog, job_id, "w1", LEASE)
    with pytest.raises(ValueError, match="final status"), jobs_catalog.session() as s:
        finish_job(s, job_id, "w1", "running")
    with pytest.raises(LeaseLost), jobs_catalog.session() as s:
        finish_job(s, job_id, "stranger", "failed", error="no")
    with jobs_catalog.session() as s:
        finish_job(s, job_id, "w1", "failed", error="boom")
    with pytest.raises(LeaseLost), jobs_catalog.session() as s:  # finished already
        finish_job(s, job_id, "w1", "succeeded")
    job = load(jobs_catalog, job_id)
    assert job.status == "failed" and job.error == "boom" and job.finished_at is not None
    assert claim_job(jobs_catalog, job_id, "w2", LEASE) is None


def test_cancel_queued_job_is_immediate(jobs_catalog):
    job_id = new_job(jobs_catalog)
    with jobs_catalog.session() as s:
        assert request_cancel(s, job_id).status == "cancelled"
    assert claim_job(jobs_catalog, job_id, "w1", LEASE) is None
    with pytest.raises(Conflict, match="already cancelled"), jobs_catalog.session() as s:
        request_cancel(s, job_id)


def test_cancel_running_job_is_a_request(jobs_catalog):
    job_id = new_job(jobs_catalog)
    claim_job(jobs_catalog, job_id, "w1", LEASE)
    assert heartbeat(jobs_catalog, job_id, "w1", LEASE) is False
    with jobs_catalog.session() as s:
        job = request_cancel(s, job_id)
    assert job.status == "running" and job.cancel_requested
    assert heartbeat(jobs_catalog, job_id, "w1", LEASE) is True
    with jobs_catalog.session() as s:
        finish_job(s, job_id, "w1", "cancelled")
    assert load(jobs_catalog, job_id).status == "cancelled"


def test_retry(jobs_catalog):
    job_id = new_job(jobs_catalog, max_attempts=1)
    with pytest.raises(Conflict, match="only failed or cancelled"), jobs_catalog.session() as s:
        retry_job(s, job_id)
    claim_job(jobs_catalog, job_id, "w1", LEASE)
    with jobs_catalog.session() as s:
        finish_job(s, job_id, "w1", "failed", error="boom")
    assert claim_job(jobs_catalog, job_id, "w2", LEASE) is None
    with jobs_catalog.session() as s:
        job = retry_job(s, job_id)
    assert job.status == "queued" and job.error is None and job.max_attempts == 2
    job = claim_job(jobs_catalog, job_id, "w2", LEASE)
    assert job is not None and job.attempts == 2


def test_release_gives_the_job_back_without_counting_an_attempt(jobs_catalog):
    job_id = new_job(jobs_catalog)
    claim_job(jobs_catalog, job_id, "w1", LEASE)
    release_job(jobs_catalog, job_id, "stranger")  # not the owner: no effect
    assert load(jobs_catalog, job_id).status == "running"
    release_job(jobs_catalog, job_id, "w1")
    job = load(jobs_catalog, job_id)
    assert job.status == "queued" and job.attempts == 0 and job.lease_owner is None
    with pytest.raises(LeaseLost):
        heartbeat(jobs_catalog, job_id, "w1", LEASE)


def test_requeue_expired(jobs_catalog):
    live = new_job(jobs_catalog)
    claim_job(jobs_catalog, live, "w-live", LEASE)
    queued = new_job(jobs_catalog)
    expired = new_job(jobs_catalog)
    expire_now(jobs_catalog, expired, "w-dead")
    exhausted = new_job(jobs_catalog, max_attempts=1)
    expire_now(jobs_catalog, exhausted, "w-dead")
    cancelling = new_job(jobs_catalog)
    expire_now(jobs_catalog, cancelling, "w-dead")
    with jobs_catalog.session() as s:
        request_cancel(s, cancelling)

    requeued = requeue_expired(jobs_catalog)

    assert [j.id for j in requeued] == [expired]
    assert requeued[0].queue == "cpu"
    states = {j: load(jobs_catalog, j) for j in (live, queued, expired, exhausted, cancelling)}
    assert states[live].status == "running" and states[live].lease_owner == "w-live"
    assert states[queued].status == "queued"
    assert states[expired].status == "queued" and states[expired].lease_owner is None
    assert states[exhausted].status == "failed"
    assert "w-dead stopped responding" in states[exhausted].error
    assert states[cancelling].status == "cancelled"
    assert requeue_expired(jobs_catalog) == []
    job = claim_job(jobs_catalog, expired, "w2", LEASE)
    assert job is not None and job.attempts == 2
