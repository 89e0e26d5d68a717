"""Helpers of the evaluation tests: the tiny model and real fault-triple rows registered, adapters
trained a few steps through the job runner, evaluation jobs resolved and run the same way."""

from __future__ import annotations

from catalog.jobs import create_job, get_job
from tests.conftest import FAULTS_TEST, FAULTS_TRAIN
from worker.jobs.runner import run_job
from worker.resolve import resolve_eval_specs, resolve_train_spec

SHORT = {
    "max_steps": 3,
    "batch_size": 2,
    "grad_accum": 1,
    "save_steps": 3,
    "logging_steps": 1,
    "lr": 1e-2,
}
"""A few steps at a high learning rate, so that each adapter visibly changes the tiny model's output."""
EVAL = {"dataset": "faults", "limit": 4, "max_new_tokens": 8, "batch_size": 2}
"""The real 50-row test split, first 4 rows, 8 new tokens."""


def register_faults(catalog, store, tiny_model_dir, tmp_path):
    """`faults` (24 real training rows; test = the real 50-row test file) and the tiny model `tiny`;
    the test modules' `evaluable` fixture."""
    from datasets_prep.register import add_dataset
    from worker.models.registration import register_path

    rows = tmp_path / "faults24.jsonl"
    rows.write_text("".join(FAULTS_TRAIN.read_text(encoding="utf-8").splitlines(True)[:24]), encoding="utf-8")
    add_dataset(catalog, store, "faults", rows, "triples", test_path=FAULTS_TEST, user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
    return catalog


def train(catalog, settings, store, name: str, method: str, flags: dict, **overrides) -> None:
    """Train adapter `name` through the runner (3 steps); fail the test unless it succeeds."""
    with catalog.session() as s:
        spec = resolve_train_spec(
            s, name=name, method=method, model="tiny", dataset="faults", template="plain",
            method_flags=flags, train_flags={**SHORT, **overrides}, max_len=192, max_source_len=128,
        )  # fmt: skip
        job_id = create_job(s, "train", spec.to_json(), "tester", queue="gpu", logs_dir=str(settings.logs)).id
    assert run_job(catalog, job_id, "test-worker", store=store) == "succeeded", _error(catalog, job_id)


def submit_eval(catalog, settings, store, **request) -> list[int]:
    """Resolve an evaluation request (EVAL's defaults) and queue its jobs; returns their ids."""
    with catalog.session() as s:
        specs = resolve_eval_specs(s, store, **{**EVAL, **request})
        return [
            create_job(s, "eval", spec.to_json(), "tester", queue="gpu", logs_dir=str(settings.logs)).id
            for spec in specs
        ]


def evaluate(catalog, settings, store, **request):
    """Run the single job of an evaluation request through the runner; returns the finished job."""
    (job_id,) = submit_eval(catalog, settings, store, **request)
    status = run_job(catalog, job_id, "test-worker", store=store)
    assert status == "succeeded", _error(catalog, job_id)
    with catalog.session() as s:
        return get_job(s, job_id)


def _error(catalog, job_id: int) -> str:
    with catalog.session() as s:
        job = get_job(s, job_id)
    log = open(job.log_path, encoding="utf-8").read() if job.log_path else ""
    return f"{job.status}: {job.error}\n{log}"
