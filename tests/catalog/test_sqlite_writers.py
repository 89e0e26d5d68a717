"""Item 11 of issue 14: four processes writing the SQLite catalog at once (500 writes each: submits,
lease heartbeats with progress, cancels and retries, the last two reading before they write) while a
fifth reads the queue in a loop. No write fails: nothing like "database is locked" reaches a user,
and the reader never blocks the progress writes."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from catalog.jobs import claim_job, heartbeat, list_jobs, request_cancel, retry_job, submit_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WRITERS, WRITES = 4, 500


def _catalog(home: str):
    os.environ["FT_HOME"] = home
    from catalog.db import Catalog
    from catalog.settings import Settings

    return Catalog(Settings.from_env())


def _writer(home: str, index: int, start, errors) -> None:
    catalog = _catalog(home)
    owner = f"writer-{index}"
    leased, _ = submit_job(catalog, "convert", {"writer": index, "leased": True}, "tester")
    assert claim_job(catalog, leased.id, owner, lease_seconds=600) is not None
    start.wait()
    job_id = None
    for i in range(WRITES):
        try:
            step = i % 4
            if step == 0:
                job_id = submit_job(catalog, "convert", {"writer": index, "i": i}, "tester")[0].id
            elif step == 1:
                heartbeat(catalog, leased.id, owner, 600, {"step": i})
            elif step == 2:
                with catalog.session() as s:
                    request_cancel(s, job_id)
            else:
                with catalog.session() as s:
                    retry_job(s, job_id)
        except Exception as exc:  # the test's point: nothing may fail
            errors.put(f"writer {index} write {i}: {type(exc).__name__}: {exc}")
    catalog.dispose()


def _reader(home: str, start, stop, errors, reads) -> None:
    catalog = _catalog(home)
    start.wait()
    n = 0
    while not stop.is_set():
        try:
            with catalog.session() as s:
                list_jobs(s, limit=200)
            n += 1
        except Exception as exc:
            errors.put(f"reader: {type(exc).__name__}: {exc}")
    reads.value = n
    catalog.dispose()


def test_four_writer_processes_and_a_reader_never_see_a_locked_database(catalog, settings):
    ctx = multiprocessing.get_context("spawn")
    start, stop, errors = ctx.Event(), ctx.Event(), ctx.Queue()
    reads = ctx.Value("i", 0)
    home = str(settings.home)
    writers = [ctx.Process(target=_writer, args=(home, i, start, errors)) for i in range(WRITERS)]
    reader = ctx.Process(target=_reader, args=(home, start, stop, errors, reads))
    for p in [*writers, reader]:
        p.start()
    start.set()
    for p in writers:
        p.join(timeout=500)
    stop.set()
    reader.join(timeout=60)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == [], "\n".join(failures[:20])
    assert [p.exitcode for p in [*writers, reader]] == [0] * (WRITERS + 1)
    assert reads.value > 0

    with catalog.session() as s:
        jobs = list_jobs(s, limit=10_000)
    leased = [j for j in jobs if j.spec.get("leased")]
    assert sorted(j.progress["step"] for j in leased) == [WRITES - 3] * WRITERS  # the last heartbeat's
    submitted = [j for j in jobs if not j.spec.get("leased")]
    assert len(submitted) == WRITERS * len(range(0, WRITES, 4))
    assert {j.status for j in submitted} == {"queued"}  # each was cancelled and then retried
