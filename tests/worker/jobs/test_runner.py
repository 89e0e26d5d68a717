"""worker.jobs.runner.run_job called directly: a real conversion, real failures, cancellation, a lost
lease, an atomic finish, and the handler registry."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from sqlalchemy import func, select

from catalog.db import Catalog
from catalog.errors import Conflict, InvalidInput
from catalog.jobs import claim_job, create_job, get_job, release_job, request_cancel
from catalog.models import Conversion, Dataset, PromptTemplate
from tests.conftest import FAULTS_TEST
from worker.jobs.handlers import HANDLERS, HandlerRegistry, JobContext
from worker.jobs.runner import LOST, SKIPPED, run_job


@pytest.fixture
def fast(catalog):
    """The same catalog with a 3-second lease (heartbeat every second)."""
    return Catalog(dataclasses.replace(catalog.settings, lease_seconds=3), engine=catalog.engine)


@pytest.fixture
def convert_spec(catalog, store, tiny_model_dir):
    """A real convert spec: the 50-row fault test set, the tiny model, the `plain` template."""
    from datasets_prep.convert import resolve_convert_spec
    from datasets_prep.register import add_dataset
    from worker.models.registration import register_path

    add_dataset(catalog, store, "faults", FAULTS_TEST, user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
        return resolve_convert_spec(s, dataset="faults", model="tiny", template="plain", max_len=256)


def submit(catalog: Catalog, spec: dict, kind: str = "convert") -> int:
    with catalog.session() as s:
        return create_job(s, kind, spec, "tester", logs_dir=str(catalog.settings.logs)).id


def load(catalog: Catalog, job_id: int):
    with catalog.session() as s:
        return get_job(s, job_id)


def log_text(catalog: Catalog, job_id: int) -> str:
    return (catalog.settings.logs / f"job-{job_id}.log").read_text()


def test_convert_job_registers_its_conversion(catalog, store, convert_spec):
    job_id = submit(catalog, convert_spec.to_json())

    assert run_job(catalog, job_id, "w1", store=store) == "succeeded"

    job = load(catalog, job_id)
    assert job.status == "succeeded" and job.attempts == 1 and job.error is None
    assert job.progress["stage"] == "done" and job.progress["rows_done"] == 50
    assert job.result["cache_hit"] is False
    with catalog.session() as s:
        conversion = s.get(Conversion, job.result["conversion_id"])
        assert conversion.job_id == job_id and conversion.cache_key == convert_spec.cache_key
    assert store.verify(conversion.artifact_uri) == []
    assert f"job {job_id} succeeded" in log_text(catalog, job_id)

    again = submit(catalog, convert_spec.to_json())  # e.g. submitted before the first one finished
    assert run_job(catalog, again, "w1", store=store) == "succeeded"
    assert load(catalog, again).result == {"conversion_id": conversion.id, "cache_hit": True}
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Conversion)) == 1


def test_bad_input_fails_the_job_with_its_message(catalog, store, convert_spec):
    with catalog.session() as s:
        store.remove(s.get(Dataset, convert_spec.dataset_id).artifact_uri)  # the store lost the dataset
    job_id = submit(catalog, convert_spec.to_json())

    assert run_job(catalog, job_id, "w1", store=store) == "failed"

    job = load(catalog, job_id)
    assert job.status == "failed" and "missing from the artifact store" in job.error
    assert "\n" not in job.error
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Conversion)) == 0


def test_unexpected_error_fails_with_one_line_and_the_traceback_in_the_log(catalog, store):
    registry = HandlerRegistry()

    @registry.register("convert")
    def buggy(ctx: JobContext):
        return {}["missing"]  # a bug, not a user error

    job_id = submit(catalog, {})
    assert run_job(catalog, job_id, "w1", store=store, handlers=registry) == "failed"

    error = load(catalog, job_id).error
    assert error.startswith("KeyError: ") and "unexpected; traceback in" in error and "\n" not in error
    assert "Traceback (most recent call last)" in log_text(catalog, job_id)


def test_a_spec_that_is_not_a_convert_spec_fails_naming_the_field(catalog, store):
    job_id = submit(catalog, {})  # e.g. written by another ft version
    assert run_job(catalog, job_id, "w1", store=store) == "failed"
    assert load(catalog, job_id).error == 'conversion spec: missing value for field "dataset_id"'


def looping_registry(steps: int = 10_000) -> HandlerRegistry:
    """A registry whose `convert` handler works in small steps, reporting progress, until stopped."""
    registry = HandlerRegistry()

    @registry.register("convert")
    def slow(ctx: JobContext):
        for step in range(1, steps + 1):
            ctx.report({"step": step, "total": steps})
            ctx.raise_if_cancelled()
            time.sleep(0.02)
        return lambda session: {"steps": steps}

    return registry


def run_in_thread(catalog: Catalog, job_id: int, registry: HandlerRegistry) -> tuple[threading.Thread, list]:
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(run_job(catalog, job_id, "w1", handlers=registry)))
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cancelling_a_running_job(fast):
    job_id = submit(fast, {})
    thread, out = run_in_thread(fast, job_id, looping_registry())
    wait_for(lambda: load(fast, job_id).progress.get("step", 0) > 1)  # progress reaches the row
    with fast.session() as s:
        request_cancel(s, job_id)
    thread.join(timeout=20)

    assert out == ["cancelled"]
    job = load(fast, job_id)
    assert job.status == "cancelled" and job.lease_owner == "w1" and job.progress["step"] > 1


def test_a_worker_that_lost_its_lease_writes_nothing(fast):
    job_id = submit(fast, {})
    thread, out = run_in_thread(fast, job_id, looping_registry())
    wait_for(lambda: load(fast, job_id).status == "running")
    release_job(fast, job_id, "w1")  # as if the job had been handed to another worker
    assert claim_job(fast, job_id, "w2", 60) is not None
    thread.join(timeout=20)

    assert out == [LOST]
    job = load(fast, job_id)
    assert job.status == "running" and job.lease_owner == "w2"


def test_a_job_held_elsewhere_or_finished_is_skipped(fast):
    job_id = submit(fast, {})
    claim_job(fast, job_id, "w-other", 60)
    assert run_job(fast, job_id, "w1", handlers=looping_registry(1)) == SKIPPED
    assert load(fast, job_id).lease_owner == "w-other"

    done = submit(fast, {})
    assert run_job(fast, done, "w1", handlers=looping_registry(1)) == "succeeded"
    assert run_job(fast, done, "w2", handlers=looping_registry(1)) == SKIPPED
    assert load(fast, done).result == {"steps": 1}


def test_finish_registers_atomically_with_the_status(catalog):
    registry = HandlerRegistry()

    @registry.register("convert")
    def half_registered(ctx: JobContext):
        def finish(session):
            session.add(
                PromptTemplate(
                    name="ghost", version=1, kind="format", body="{input}", sha256="0", created_by="t"
                )
            )
            session.flush()
            raise Conflict("the adapter name 'x' was taken meanwhile; resubmit with another --name")

        return finish

    job_id = submit(catalog, {})
    assert run_job(catalog, job_id, "w1", handlers=registry) == "failed"
    assert load(catalog, job_id).error.startswith("the adapter name 'x' was taken")
    with catalog.session() as s:
        assert s.scalars(select(PromptTemplate).where(PromptTemplate.name == "ghost")).first() is None


def test_a_handler_that_returns_no_finish_is_a_bug(catalog):
    registry = HandlerRegistry()
    registry.register("convert")(lambda ctx: {"not": "callable"})
    job_id = submit(catalog, {})
    assert run_job(catalog, job_id, "w1", handlers=registry) == "failed"
    assert load(catalog, job_id).error.startswith("TypeError: the convert handler returned dict")


def test_registry_refuses_duplicates_and_unknown_kinds():
    registry = HandlerRegistry()
    registry.register("convert")(lambda ctx: lambda s: {})
    with pytest.raises(ValueError, match="already registered"):
        registry.register("convert")(lambda ctx: lambda s: {})
    with pytest.raises(InvalidInput, match="no handler for job kind 'train'"):
        registry.get("train")
    assert "convert" in HANDLERS.kinds()
    assert HANDLERS.get("convert").__module__ == "worker.jobs.convert"
