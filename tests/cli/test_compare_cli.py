"""`ft submit eval`, `ft adapters compare` and `ft adapters evals` through the CLI: the table's data
(--json), its Markdown, the exact `ft submit eval` hint for missing evaluations, help and errors."""

from __future__ import annotations

import json

import pytest

from catalog.jobs import get_job
from tests.worker.eval_helpers import evaluate, register_faults, train
from worker.jobs.runner import run_job

ROW_LABELS = [
    "method", "peak training memory", "trainable params", "total params", "trainable %", "inference memory",
    "training time", "f1", "precision", "recall", "micro_precision", "micro_recall", "micro_f1", "test time",
    "tokens/s", "samples",
]  # fmt: skip


@pytest.fixture
def evaluable(catalog, store, lively_model_dir, tmp_path):
    return register_faults(catalog, store, lively_model_dir, tmp_path)


@pytest.fixture
def two_adapters(evaluable, settings, store):
    """`f-lora` and `f-freeze` trained; the base and f-lora evaluated (4 rows), f-freeze not."""
    train(evaluable, settings, store, "f-lora", "lora", {"rank": 4})
    train(evaluable, settings, store, "f-freeze", "freeze", {"layers": 1})
    return evaluate(evaluable, settings, store, adapters=["f-lora"], bases=["tiny"])


def test_compare_json_markdown_text_and_the_missing_hint(two_adapters, evaluable, settings, store, ft):
    out = ft("adapters", "compare", "f-lora", "f-freeze", "--dataset", "faults", "--base", "--json")
    data = json.loads(out.stdout)
    assert (data["dataset"], data["split"], data["metric"], data["headline"]) == (
        "faults:1",
        "test",
        "triple-f1",
        "f1",
    )
    assert data["metric_keys"] == ["f1", "precision", "recall", "micro_precision", "micro_recall", "micro_f1"]
    base, lora, freeze = data["columns"]
    assert (base["name"], base["kind"], lora["name"], freeze["name"]) == (
        "tiny",
        "base",
        "f-lora",
        "f-freeze",
    )
    assert base["trainable_params"] == 0 and base["total_params"] > 0 and base["train_seconds"] is None
    assert lora["method"] == "lora" and 0 < lora["trainable_params"] < lora["total_params"]
    assert lora["peak_training_memory_bytes"] > 0 and lora["train_seconds"] > 0
    assert lora["trainable_percent"] == pytest.approx(100 * lora["trainable_params"] / lora["total_params"])
    for column in (base, lora):
        assert column["samples"] == 4 and column["test_seconds"] > 0 and column["inference_memory_bytes"] > 0
        assert set(column["metrics"]) == set(data["metric_keys"])
        assert column["tokens_per_s"] > 0 and column["template"] == "plain:1" and column["evaluation_id"]
    assert freeze["evaluation_id"] is None and freeze["metrics"] is None
    assert data["missing"] == ["f-freeze"]
    hint = "ft submit eval f-freeze --dataset faults:1:test --metric triple-f1"
    assert data["evaluate_command"] == hint

    text = ft("adapters", "compare", "f-lora", "f-freeze", "-d", "faults", "--base")
    lines = text.stdout.splitlines()
    assert lines[0] == "faults:1:test, triple-f1 (headline f1)"
    assert lines[1].split() == ["tiny", "f-lora", "f-freeze"]
    assert [line[: len(label)] for line, label in zip(lines[2:], ROW_LABELS, strict=True)] == ROW_LABELS
    assert lines[2].split()[1:] == ["(untuned)", "lora", "freeze"]
    assert f"run:\n  {hint}\n" in text.stderr and "f-freeze" in text.stderr

    md = ft(
        "adapters", "compare", "f-lora", "f-freeze", "-d", "faults:test", "--markdown"
    ).stdout.splitlines()
    assert md[0] == "| | f-lora | f-freeze |" and md[1] == "| --- | --- | --- |"
    assert [line.split(" | ")[0] for line in md[2:]] == [f"| {label}" for label in ROW_LABELS]
    assert md[ROW_LABELS.index("f1") + 2].endswith(" | - |")  # f-freeze has no score yet

    # The hint, run as printed (through the queue's job row), fills the gap.
    args = hint.split()[1:]
    submitted = json.loads(ft(*args, "--json").stdout)
    assert submitted["kind"] == "eval" and submitted["queue"] == "gpu" and submitted["status"] == "queued"
    assert run_job(evaluable, submitted["id"], "test-worker", store=store) == "succeeded"
    after = json.loads(ft("adapters", "compare", "f-lora", "f-freeze", "-d", "faults", "--json").stdout)
    assert after["missing"] == [] and after["evaluate_command"] is None
    assert after["columns"][1]["samples"] == 50  # the hint evaluates the whole split

    evals = json.loads(ft("adapters", "evals", "f-lora", "--json").stdout)
    assert [(e["metric"], e["dataset"], e["split"], e["sample_count"]) for e in evals] == [
        ("triple-f1", "faults:1", "test", 4)
    ]
    assert evals[0]["predictions_uri"].startswith("predictions/") and evals[0]["headline"] == "f1"
    listed = ft("adapters", "evals", "f-lora").stdout
    assert "triple-f1" in listed and "f1=" in listed

    # What the adapter generated, row by row, read from the checked predictions artifact.
    rows = json.loads(ft("adapters", "evals", "f-lora", "--predictions", "--limit", "3", "--json").stdout)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all(set(r) >= {"input", "gold", "prediction", "scores"} for r in rows)
    shown = ft("adapters", "evals", "f-lora", "--predictions", "--limit", "1").stdout
    assert shown.startswith(f"evaluation {evals[0]['id']} of f-lora: the first 1 rows")
    assert "--- row 0" in shown and "  gold: " in shown and "  prediction: " in shown
    missing = ft("adapters", "evals", "f-lora", "--predictions", "--eval", "999", ok=False)
    assert missing.exit_code == 1 and "adapter f-lora has no evaluation 999" in missing.output


def test_the_base_hint_and_a_later_evaluation_win(two_adapters, evaluable, settings, store, ft):
    evaluate(evaluable, settings, store, adapters=["f-lora"], limit=2)
    data = json.loads(ft("adapters", "compare", "f-lora", "-d", "faults", "--json").stdout)
    assert data["columns"][0]["samples"] == 2  # the latest evaluation of f-lora
    with evaluable.session() as s:
        from catalog.models import Evaluation

        s.query(Evaluation).filter(Evaluation.adapter_id.is_(None)).delete()
    data = json.loads(
        ft("adapters", "compare", "f-lora", "f-freeze", "-d", "faults", "--base", "--json").stdout
    )
    assert data["missing"] == ["tiny", "f-freeze"]
    assert data["evaluate_command"] == (
        "ft submit eval f-freeze --base tiny --dataset faults:1:test --metric triple-f1 --template plain:1"
    )


def test_submit_eval_cli_queues_and_runs(evaluable, settings, store, ft):
    out = ft("submit", "eval", "--base", "tiny", "-d", "faults", "--limit", "2", "--max-new-tokens", "4")
    job_id = int(out.stdout.strip())
    assert "tiny (untuned) on faults:1:test (triple-f1, base tiny)" in out.stderr
    assert run_job(evaluable, job_id, "test-worker", store=store) == "succeeded"
    with evaluable.session() as s:
        job = get_job(s, job_id)
    assert job.result["base_loads"] == 1 and len(job.result["evaluation_ids"]) == 1


def test_errors_are_one_line_and_name_the_flag(evaluable, ft):
    cases = [
        (["submit", "eval", "--dataset", "faults"], 2, "nothing to evaluate"),
        (["submit", "eval", "--base", "tiny", "-d", "faults", "--temperature", "0.5"], 2, "--temperature"),
        (["submit", "eval", "--base", "tiny", "-d", "faults:dev"], 1, "no split 'dev'"),
        (["submit", "eval", "nope", "-d", "faults"], 1, "unknown adapter 'nope'"),
        (["adapters", "compare", "nope", "-d", "faults"], 1, "unknown adapter 'nope'"),
        (["adapters", "compare", "x", "-d", "faults", "--json", "--markdown"], 2, "exclude each other"),
        (["adapters", "evals", "nope"], 1, "unknown adapter 'nope'"),
    ]
    for args, code, message in cases:
        result = ft(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        error = result.stderr.strip()
        assert error.startswith("Error: ") and message in error and "\n" not in error, error


def test_help_has_examples_and_metric_names_match_the_registry(ft):
    from cli.main import cli
    from worker.evaluation.metrics import METRICS

    (metric,) = [p for p in cli.commands["submit"].commands["eval"].params if p.name == "metric"]
    assert sorted(metric.type.choices) == sorted(METRICS)
    for args in (["submit", "eval"], ["adapters", "compare"], ["adapters", "evals"]):
        text = ft(*args, "--help").output
        assert "Example:" in text and f"ft {' '.join(args)}" in text
