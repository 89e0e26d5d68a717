"""The job transitions behind issue 14 on SQLite and PostgreSQL: idempotency keys, one active train
job per adapter name (also when submits race), a killed job process given back at once (and failed
naming the signal once its attempts are spent), queued jobs a reconciler may re-send, retry refused
when the adapter name is taken."""

from __future__ import annotations

import threading

import pytest

from catalog.errors import Conflict
from catalog.jobs import (
    claim_job,
    finish_job,
    mark_resent,
    queued_since,
    requeue_killed,
    retry_job,
    submit_job,
)
from tests.catalog.test_jobs import jobs_catalog, load  # noqa: F401  # the fixture, both backends

KILLED = "killed by signal 9 (SIGKILL)"


def submit(catalog, spec=None, **kwargs):
    return submit_job(catalog, "train", spec or {"name": "a"}, "tester", queue="gpu", **kwargs)


def test_the_same_key_is_one_job_and_another_spec_is_refused(jobs_catalog):  # noqa: F811
    first, created = submit(jobs_catalog, idempotency_key="k1")
    again, created_again = submit(jobs_catalog, idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="'k1' was already used for job 1 with a different spec"):
        submit(jobs_catalog, {"name": "b"}, idempotency_key="k1")
    other_user, created = submit_job(jobs_catalog, "train", {"name": "a"}, "someone", idempotency_key="k1")
    assert created and other_user.id != first.id


def test_racing_submits_of_one_adapter_name_make_one_job(jobs_catalog):  # noqa: F811
    results: list[object] = []

    def go():
        try:
            results.append(submit(jobs_catalog, adapter_name="dup4")[0].id)
        except Conflict as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r for r in results if isinstance(r, int)]
    assert len(ids) == 1, results
    refused = [r for r in results if isinstance(r, str)]
    assert refused == [f"job {ids[0]} is already training an adapter named 'dup4': choose another --name"] * 3


def test_a_finished_job_frees_its_name_and_retry_is_refused_once_it_is_taken(jobs_catalog):  # noqa: F811
    job, _ = submit(jobs_catalog, adapter_name="n")
    claim_job(jobs_catalog, job.id, "w1", 60)
    with jobs_catalog.session() as s:
        finish_job(s, job.id, "w1", "failed", error="boom")
    newer, created = submit(jobs_catalog, {"name": "n", "lr": 2}, adapter_name="n")
    assert created
    with pytest.raises(Conflict, match=f"job {newer.id} is already training an adapter named 'n'"):
        with jobs_catalog.session() as s:
            retry_job(s, job.id)
    assert load(jobs_catalog, job.id).status == "failed"


def test_a_killed_job_process_is_requeued_at_once_then_failed_naming_the_signal(jobs_catalog):  # noqa: F811
    job, _ = submit(jobs_catalog)
    assert requeue_killed(jobs_catalog, job.id, "w1", KILLED) is None  # nobody held it
    for attempt in (1, 2):
        assert claim_job(jobs_catalog, job.id, f"w:{attempt}", 600) is not None  # a long lease
        assert requeue_killed(jobs_catalog, job.id, "someone-else", KILLED) is None  # guarded by owner
        assert requeue_killed(jobs_catalog, job.id, f"w:{attempt}", KILLED).status == "queued"
        row = load(jobs_catalog, job.id)
        assert row.status == "queued" and row.lease_owner is None and row.attempts == attempt
    assert claim_job(jobs_catalog, job.id, "w:3", 600) is not None
    assert requeue_killed(jobs_catalog, job.id, "w:3", KILLED).status == "failed"
    row = load(jobs_catalog, job.id)
    assert row.error == f"the job process was {KILLED}; gave up after 3 attempts"


def test_queued_since_lists_jobs_waiting_longer_than_the_grace(jobs_catalog):  # noqa: F811
    job, _ = submit(jobs_catalog)
    assert [j.id for j in queued_since(jobs_catalog, 0)] == [job.id]
    assert queued_since(jobs_catalog, 3600) == []
    mark_resent(jobs_catalog, job.id)
    assert queued_since(jobs_catalog, 3600) == []
    claim_job(jobs_catalog, job.id, "w1", 60)
    assert queued_since(jobs_catalog, 0) == []  # running: not the reconciler's to re-send
