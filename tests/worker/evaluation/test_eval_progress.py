"""An evaluation job's progress moves within seconds: the real `eval` handler, run on the tiny model and
real fault-report rows, reports the model load, then rows done / total over the whole job with tokens/s
and an ETA after every batch AND from inside each batch (every few decoding steps), then scoring; and
the job row shows it when run through the job runner."""

from __future__ import annotations

import logging

import pytest

from catalog.jobs import get_job
from tests.worker.eval_helpers import register_faults, submit_eval, train
from worker.evaluation.stopping import STEP_PROGRESS_EVERY
from worker.jobs.handlers import HANDLERS, JobContext
from worker.jobs.runner import run_job


@pytest.fixture
def evaluable(catalog, store, tiny_model_dir, tmp_path):
    return register_faults(catalog, store, tiny_model_dir, tmp_path)


def _run_handler(catalog, settings, store, job_id: int) -> list[dict]:
    """Run the registered `eval` handler on the job as a worker would, recording every report."""
    seen: list[dict] = []
    with catalog.session() as s:
        job = get_job(s, job_id)
        s.expunge(job)
    ctx = JobContext(
        catalog, store, settings, job, logging.getLogger("test-eval"), seen.append, lambda: False
    )
    finish = HANDLERS.get("eval")(ctx)
    with catalog.session() as s:
        assert finish(s)["evaluation_ids"]
    return seen


def test_progress_after_every_batch_and_inside_each(evaluable, settings, store, one_thread):
    max_new = 3 * STEP_PROGRESS_EVERY  # the untuned tiny model repeats one token: every row runs this long
    (job_id,) = submit_eval(
        evaluable, settings, store, bases=["tiny"], limit=6, batch_size=2, max_new_tokens=max_new,
        metric="exact-match",
    )  # fmt: skip
    seen = _run_handler(evaluable, settings, store, job_id)

    assert seen[0] == {"stage": "load", "model": "tiny", "rows_done": 0, "rows_total": 6}
    assert seen[-1]["stage"] == "score" and seen[-1]["rows_done"] == 6
    evals = [p for p in seen if p["stage"] == "eval"]
    assert all(p["rows_total"] == 6 and p["models"] == "1/1" for p in evals)
    done = [p["rows_done"] for p in evals]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 6
    assert {0, 2, 4} <= set(done)  # after every batch of 2 rows, before the end
    inside = [p for p in evals if "decoding" in p]
    # each batch of 2 rows is heard from at least at steps 16 and 32 of its 48 (and 48 itself)
    for rows_before in (0, 2, 4):
        steps = [int(p["decoding"].split("/")[0]) for p in inside if p["rows_done"] == rows_before]
        assert {STEP_PROGRESS_EVERY, 2 * STEP_PROGRESS_EVERY} <= set(steps), (rows_before, steps)
        assert steps == sorted(steps)
    assert inside[0]["decoding"].endswith(f"/{max_new} of 2 rows")
    timed = [p for p in evals if p["rows_done"] > 0 or "decoding" in p]
    assert all(p["tokens_per_s"] > 0 and p["eta_s"] >= 0 and p["elapsed_s"] >= 0 for p in timed)
    assert evals[-1]["eta_s"] == 0.0


def test_progress_counts_every_model_of_the_job(evaluable, settings, store, one_thread):
    """Two models (an adapter and the base) in one job: the rows of both, one count from 0 to the end."""
    train(evaluable, settings, store, "f-freeze", "freeze", {"layers": 1})
    (job_id,) = submit_eval(
        evaluable, settings, store, adapters=["f-freeze"], bases=["tiny"], limit=4, batch_size=2,
        max_new_tokens=8, metric="exact-match",
    )  # fmt: skip
    seen = _run_handler(evaluable, settings, store, job_id)
    evals = [p for p in seen if p["stage"] in ("eval", "score")]
    done = [p["rows_done"] for p in evals]
    assert done == sorted(done) and done[-1] == 8 and {0, 2, 4, 6, 8} <= set(done)
    assert [p["models"] for p in evals if p["stage"] == "score"] == ["1/2", "2/2"]
    assert all(p["rows_total"] == 8 for p in seen)


def test_the_job_row_shows_the_progress(evaluable, settings, store, ft, one_thread):
    (job_id,) = submit_eval(
        evaluable, settings, store, bases=["tiny"], limit=4, batch_size=2, metric="exact-match"
    )
    assert run_job(evaluable, job_id, "test-worker", store=store) == "succeeded"
    with evaluable.session() as s:
        progress = get_job(s, job_id).progress
    assert progress["stage"] == "score" and (progress["rows_done"], progress["rows_total"]) == (4, 4)
    shown = ft("jobs", "show", str(job_id)).output
    assert "score 4/4 rows (100%)" in shown
