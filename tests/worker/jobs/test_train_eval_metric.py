"""Scoring during training (`--eval-metric`, worker/train/scoring.py) on the tiny real Llama and the
real fault-triple rows: a train job through the runner records the metric at every evaluation step,
keeps the best step's weights in the adapter, and `ft adapters export --checkpoint best` gives them;
the scorer's rule (a better score replaces the kept step, a tie keeps the earlier one) with real
generations; and the flags' errors.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from catalog.adapters import get_adapter
from catalog.errors import InvalidInput
from datasets_prep.rows import Row
from tests.conftest import FAULTS_TEST
from tests.worker.eval_helpers import register_faults, train
from worker.evaluation.decoding import Decoding
from worker.train.config import TrainConfig
from worker.train.scoring import BEST, BEST_JSON, StepScorer, read_best, sample_rows

SCORED = {"eval_split": "test", "eval_metric": "triple-f1", "eval_rows": 4, "eval_steps": 1}


def adapter_job(catalog, name: str) -> int:
    with catalog.session() as s:
        return get_adapter(s, name).job_id


@pytest.fixture
def evaluable(catalog, store, lively_model_dir, tmp_path):
    return register_faults(catalog, store, lively_model_dir, tmp_path)


def test_a_train_job_scores_every_evaluation_and_keeps_the_best_step(
    evaluable, settings, store, ft, tmp_path
):
    train(evaluable, settings, store, "scored", "lora", {"rank": 4}, **SCORED)
    with evaluable.session() as s:
        adapter = get_adapter(s, "scored")
        metrics, uri = adapter.metrics, adapter.artifact_uri
    curve = metrics["eval_metrics"]
    assert metrics["eval_metric"] == "triple-f1" and sorted(curve, key=int) == ["1", "2", "3"]
    assert all(0.0 <= summary["f1"] <= 1.0 for summary in curve.values())
    best = max(curve.values(), key=lambda m: m["f1"])["f1"]
    assert metrics["best_step"] == min(int(step) for step, m in curve.items() if m["f1"] == best)

    job_id = adapter_job(evaluable, "scored")
    plotted = ft("jobs", "plot", str(job_id), "-o", str(tmp_path / "curves.png")).output
    assert "eval/f1 3" in plotted and (tmp_path / "curves.png").stat().st_size > 0  # its curve, drawn
    shown = ft("adapters", "show", "scored").output
    assert (
        f"triple-f1 f1 by step: 1 {curve['1']['f1']:.3f}, 2 " in shown
        and f"(best: {metrics['best_step']})" in shown
    )

    artifact = store.path(uri)
    if metrics["best_step"] == 3:  # the last step: the adapter itself is the best
        assert not (artifact / BEST).exists()
        return
    kept = json.loads((artifact / BEST / BEST_JSON).read_text())
    assert kept["step"] == metrics["best_step"] and kept["summary"] == curve[str(kept["step"])]
    out = ft("adapters", "export", "scored", str(tmp_path / "best"), "--checkpoint", "best").output
    assert f"the best-scoring step, {kept['step']}" in out
    ft("adapters", "export", "scored", str(tmp_path / "last"))
    assert not (tmp_path / "last" / BEST).exists()
    best_w = load_file(tmp_path / "best" / "adapter_model.safetensors")
    last_w = load_file(tmp_path / "last" / "adapter_model.safetensors")
    assert best_w.keys() == last_w.keys()
    assert any(not torch.equal(best_w[k], last_w[k]) for k in best_w)  # two steps apart at lr 1e-2


def test_export_best_of_an_adapter_trained_without_a_metric_says_so(evaluable, settings, store, ft, tmp_path):
    train(evaluable, settings, store, "plain", "lora", {"rank": 4})
    result = ft("adapters", "export", "plain", str(tmp_path / "x"), "--checkpoint", "best", ok=False)
    assert result.exit_code != 0 and "trained without --eval-metric" in result.output
    assert not (tmp_path / "x").exists()


def test_a_better_score_replaces_the_kept_step_and_a_tie_does_not(lively_model_dir, tmp_path):
    import logging

    tok = AutoTokenizer.from_pretrained(lively_model_dir)
    model = AutoModelForCausalLM.from_pretrained(lively_model_dir, dtype=torch.float32)
    rows = [
        Row.from_json(json.loads(line)) for line in FAULTS_TEST.read_text(encoding="utf-8").splitlines()[:3]
    ]
    saved: list[int] = []

    def save(model, directory, card):
        directory.mkdir(parents=True)
        (directory / "weights").write_text(str(card["step"]))
        saved.append(card["step"])

    def scorer(rows):
        return StepScorer(
            rows=rows, template_kind="format", template_body="{instruction}{input}", tokenizer=tok,
            metric="exact-match", max_source_len=64, workdir=tmp_path, save=save,
            log=logging.getLogger("test"), decoding=Decoding(max_new_tokens=6, batch_size=3),
        )  # fmt: skip

    first = scorer(rows)(model, 1)
    assert read_best(tmp_path)["step"] == 1 and saved == [1]
    assert scorer(rows)(model, 2) == first  # the same model: a tie, step 1 stays
    assert read_best(tmp_path)["step"] == 1 and saved == [1]
    # references equal to what the model writes: exact-match 1.0, better than the kept score
    from worker.evaluation.generation import GenerationConfig, generate

    prompts = [r.instruction + r.input for r in rows]
    texts = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, batch_size=3)).texts
    echoed = [
        Row(instruction=r.instruction, input=r.input, output=t) for r, t in zip(rows, texts, strict=True)
    ]
    assert scorer(echoed)(model, 3)["exact_match"] > first["exact_match"]
    best = read_best(tmp_path)
    assert best["step"] == 3 and saved == [1, 3]
    assert (tmp_path / BEST / "weights").read_text() == "3"
    assert not (tmp_path / f"{BEST}.old").exists() and not (tmp_path / f"{BEST}.tmp").exists()


def test_sampled_rows_are_seeded_and_keep_their_order():
    rows = [Row(instruction="", input=str(i), output=str(i)) for i in range(20)]
    picked = sample_rows(rows, 5, seed=3)
    assert picked == sample_rows(rows, 5, seed=3) != sample_rows(rows, 5, seed=4)
    assert [int(r.input) for r in picked] == sorted(int(r.input) for r in picked)
    assert sample_rows(rows[:4], 5, seed=3) == rows[:4]


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"eval_metric": "triple-f1"}, "give --eval-split too"),
        ({"eval_metric": "bleu", "eval_split": "test"}, "--eval-metric: unknown metric 'bleu'"),
        ({"eval_rows": 0}, "--eval-rows"),
    ],
)
def test_the_flags_errors_name_what_to_fix(kwargs, says):
    with pytest.raises(InvalidInput, match=says):
        TrainConfig(**kwargs)


def test_a_sharded_full_job_cannot_score_and_is_refused_at_submit(evaluable):
    from worker.resolve import resolve_train_spec

    with evaluable.session() as s, pytest.raises(InvalidInput, match="add --no-fsdp"):
        resolve_train_spec(
            s, name="x", method="full", model="tiny", dataset="faults", template="plain", method_flags={},
            train_flags={"max_steps": 2, "gpus": 2, **SCORED}, max_len=192, max_source_len=128,
        )  # fmt: skip
