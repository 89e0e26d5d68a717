"""`ft submit train` says what --max-len / --max-source-len do to the training rows before anything is
queued (counted by the conversion's own tokenisation, so the numbers are the job's), refuses a job
whose limits take the answer from most rows (naming the flag and a length that fits), `--dry-run`
prints the resolved spec and queues nothing, and `--max-samples N` trains on N seeded rows."""

from __future__ import annotations

import json

import pytest

from catalog.models import Job
from tests.conftest import FAULTS_TRAIN

ROWS = 60
TRAIN = ["submit", "train", "--method", "lora", "--rank", "4", "-m", "tiny", "-d", "faults", "-t", "plain"]


@pytest.fixture
def faults(catalog, store, tiny_model_dir, tmp_path):
    """60 real fault-report rows as `faults` (train only) and the tiny model."""
    from datasets_prep.register import add_dataset
    from worker.models.registration import register_path

    rows = tmp_path / "faults60.jsonl"
    rows.write_text(
        "".join(FAULTS_TRAIN.read_text(encoding="utf-8").splitlines(True)[:ROWS]), encoding="utf-8"
    )
    add_dataset(catalog, store, "faults", rows, "triples", user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
    return catalog


def queued(catalog) -> int:
    with catalog.session() as s:
        return s.query(Job).count()


def expected(store, catalog, tiny_model_dir, max_len: int, max_source_len: int):
    """The same rows through the conversion's own tokenisation."""
    from catalog.datasets import get_dataset
    from catalog.templates import get_template
    from datasets_prep.canonical import load_split
    from datasets_prep.tokenize import SplitStats, tokenize_rows
    from worker.models.loading import load_tokenizer

    with catalog.session() as s:
        rows = list(load_split(store, get_dataset(s, "faults"), "train"))
        tpl = get_template(s, "plain")
        stats = SplitStats()
        for _ in tokenize_rows(rows, load_tokenizer(tiny_model_dir), tpl.kind, tpl.body, max_len=max_len,
                               max_source_len=max_source_len, stats=stats):  # fmt: skip
            pass
    return stats


def test_submit_reports_what_the_limits_do_and_the_numbers_are_the_conversions(
    ft, faults, store, tiny_model_dir
):
    stats = expected(store, faults, tiny_model_dir, 128, 64)
    assert stats.prompt_truncated > 0  # the case is not vacuous
    out = ft(*TRAIN, "--max-len", "128", "--max-source-len", "64", "--dry-run", "--json").stdout
    lengths = json.loads(out)["lengths"]
    assert lengths["exact"] and lengths["rows"] == ROWS and lengths["examined"] == ROWS
    assert (lengths["dropped"], lengths["prompt_truncated"], lengths["output_truncated"]) == (
        stats.dropped, stats.prompt_truncated, stats.output_truncated,
    )  # fmt: skip
    said = ft(*TRAIN, "--max-len", "128", "--max-source-len", "64", "--dry-run").output
    assert (
        f"{ROWS} train rows at --max-len 128: " in said
        and f"{stats.prompt_truncated} prompts cut to 64" in said
    )
    assert "dry run: nothing was queued" in said and "method_config:" in said
    whole = ft(*TRAIN, "--dry-run").output
    assert f"{ROWS} train rows at --max-len 2048: every row whole" in whole
    assert queued(faults) == 0


def test_limits_that_take_most_answers_are_refused_naming_the_flag(ft, faults, store, tiny_model_dir):
    stats = expected(store, faults, tiny_model_dir, 48, 40)
    assert stats.dropped + stats.output_truncated > ROWS / 2
    refused = ft(*TRAIN, "--max-len", "48", "--max-source-len", "40", ok=False)
    assert refused.exit_code != 0
    line = refused.output.strip().splitlines()[-1]
    hurt = stats.dropped + stats.output_truncated
    assert f"--max-len 48 drops or cuts the answer of {hurt} of {ROWS} train rows" in line
    assert "raise --max-len (95% of the rows fit whole in " in line
    assert queued(faults) == 0
    # the same limits on a dry run are reported, not refused: the user is looking
    assert ft(*TRAIN, "--max-len", "48", "--max-source-len", "40", "--dry-run").exit_code == 0


def test_a_cached_conversion_answers_exactly_without_tokenising(ft, faults, store, tiny_model_dir):
    from datasets_prep.convert import resolve_convert_spec
    from datasets_prep.length_report import length_report
    from worker.jobs.runner import run_job

    job = json.loads(ft("submit", "convert", "faults", "-m", "tiny", "-t", "plain", "--max-len", "128",
                        "--max-source-len", "64", "--json").stdout)  # fmt: skip
    assert run_job(faults, job["id"], "w", store=store) == "succeeded"

    def no_tokenizer():
        raise AssertionError("the registered conversion should have answered")

    with faults.session() as s:
        spec = resolve_convert_spec(s, dataset="faults", model="tiny", template="plain", max_len=128,
                                    max_source_len=64, store=store)  # fmt: skip
        report = length_report(s, store, spec, "train", tokenizer_for=no_tokenizer)
    stats = expected(store, faults, tiny_model_dir, 128, 64)
    assert report.exact and report.rows == ROWS
    assert (report.stats.prompt_truncated, report.stats.dropped) == (stats.prompt_truncated, stats.dropped)


def test_a_large_split_is_estimated_from_a_sample(faults, store, tiny_model_dir):
    from datasets_prep.convert import resolve_convert_spec
    from datasets_prep.length_report import length_report
    from worker.models.loading import load_tokenizer

    with faults.session() as s:
        spec = resolve_convert_spec(s, dataset="faults", model="tiny", template="plain", max_len=128,
                                    max_source_len=64, store=store)  # fmt: skip
        report = length_report(s, store, spec, "train", tokenizer_for=lambda: load_tokenizer(tiny_model_dir),
                               sample_rows=20)  # fmt: skip
    assert not report.exact and report.examined == 20 and report.rows == ROWS
    assert "(estimated from 20 rows)" in report.line()
    assert report.to_json()["prompt_truncated"] == round(report.stats.prompt_truncated / 20 * ROWS)


def test_max_samples_trains_on_that_many_seeded_rows(ft, faults, store):
    from catalog.adapters import get_adapter
    from worker.jobs.runner import run_job

    said = ft(*TRAIN, "--max-samples", "10", "--epochs", "1", "--batch-size", "2", "--grad-accum", "1",
              "--max-len", "192", "--name", "slice", "--json")  # fmt: skip
    job_id = json.loads(said.stdout)["id"]
    assert "--max-samples 10: 10 of them are trained on" in said.stderr
    assert run_job(faults, job_id, "w", store=store) == "succeeded"
    with faults.session() as s:
        adapter = get_adapter(s, "slice")
        assert adapter.metrics["steps"] == 5  # 10 rows, 2 a step, one epoch
        assert adapter.hyperparameters["train"]["max_samples"] == 10
    bad = ft(*TRAIN, "--max-samples", "0", ok=False)
    assert bad.exit_code != 0 and "--max-samples" in bad.output


def test_rows_sample_is_seeded_and_keeps_order():
    from worker.train.batching import load_rows

    rows = load_rows(
        {"input_ids": [[1, i, 2] for i in range(50)], "labels": [[-100, i, 2] for i in range(50)]}
    )
    a, b, c = rows.sample(10, 1), rows.sample(10, 1), rows.sample(10, 2)
    assert a.input_ids == b.input_ids and a.input_ids != c.input_ids and len(a) == 10
    assert [ids[1] for ids in a.input_ids] == sorted(ids[1] for ids in a.input_ids)
    assert rows.sample(None, 1) is rows and rows.sample(500, 1) is rows


def test_convert_reports_and_refuses_the_same_way(ft, faults):
    said = ft("submit", "convert", "faults", "-m", "tiny", "-t", "plain", "--max-len", "256", "--json")
    assert f"{ROWS} train rows at --max-len 256: " in said.stderr
    refused = ft("submit", "convert", "faults", "-m", "tiny", "-t", "plain", "--max-len", "48",
                 "--max-source-len", "40", ok=False)  # fmt: skip
    assert refused.exit_code != 0 and "--max-len 48 drops or cuts the answer of " in refused.output
    assert queued(faults) == 1  # the first one only
