"""The benchmark helpers that run on CPU: the decode-step profile (tiny model, fp32, where the static
and dynamic caches must agree) and the quality summary's merging of seed repeats."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import FAULTS_TEST, REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_step_bench_profiles_and_times_both_caches(tiny_model_dir, tmp_path):
    bench = _load("bench_decode_step")
    path = bench.main([
        "--model", str(tiny_model_dir), "--data", str(FAULTS_TEST), "--limit", "3", "--max-new-tokens", "4",
        "--device", "cpu", "--end-to-end", "3", "--out", str(tmp_path),
    ])  # fmt: skip
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["dtype"] == "float32" and report["prompts"] == 3
    assert report["profile_eager_step"]["aten_ops"] > 0
    assert report["dynamic_cache"]["new_tokens"] == report["static_cache"]["new_tokens"] == 12
    assert report["identical_texts"] is True
    e2e = report["end_to_end"]
    assert e2e["prompts"] == 50 and e2e["identical_fraction"] == 1.0
    assert e2e["dynamic_cache"]["new_tokens"] == e2e["static_cache"]["new_tokens"] > 0


def _row(variant: str, f1: float, seed: int | None, recipe: str = "lr=0.06") -> dict:
    return {
        "method": "ptuning", "variant": variant, "recipe": recipe, "seed": seed, "epochs": 16, "batch": 32,
        "max_len": 2048, "new_tokens": 512, "metrics": {"f1": f1, "precision": 2 * f1}, "train_s": 100.0,
        "train_mem": 1, "test_s": 1.0, "trainable_pct": 0.1, "file": f"{variant}.json",
    }  # fmt: skip


def test_seed_repeats_count_as_their_mean():
    summary = _load("summarize_quality")
    rows = [
        _row("p", 0.155, 42), _row("p-s1", 0.142, 1), _row("p-s2", 0.161, 2), _row("p-s3", 0.175, 3),
        _row("q", 0.30, 42, recipe="lr=0.1"),  # another recipe: left alone
    ]  # fmt: skip
    merged = summary.merge_seeds(rows, ["f1", "precision"])
    assert len(merged) == 2
    (mean,) = [r for r in merged if r["variant"].startswith("p,")]
    assert mean["metrics"]["f1"] == pytest.approx((0.155 + 0.142 + 0.161 + 0.175) / 4)
    assert mean["metrics"]["precision"] == pytest.approx(2 * mean["metrics"]["f1"])
    assert mean["variant"] == "p, mean of 4 seeds (f1 0.142-0.175)"
    assert [r["variant"] for r in merged if r is not mean] == ["q"]
    # one seed alone is not a mean
    assert summary.merge_seeds(rows[:1], ["f1"]) == rows[:1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_throughput_runs_both_paths_on_the_same_rows(tiny_model_dir, tmp_path):
    from tests.worker.train_helpers import tokenised_rows

    data = tokenised_rows(tiny_model_dir, 8)
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "faults.json").write_text(json.dumps({
        "input_ids": list(data["input_ids"]), "labels": list(data["labels"]), "pad_id": 3,
        "source": "tiny rows",
    }))  # fmt: skip
    bench = _load("train_throughput")
    bench.SHAPES["tiny"] = dict(model_type="llama", hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                vocab_size=1024)  # fmt: skip
    path = bench.main([
        "--rows", str(rows), "--shape", "tiny", "--data", "faults", "--limit", "8", "--batch-size", "2",
        "--grad-accum", "2", "--warmup", "1", "--steps", "1", "--model-dir", str(tmp_path / "m"),
        "--out", str(tmp_path),
    ])  # fmt: skip
    result = json.loads(path.read_text())["results"]["faults"]
    losses = {v: result[v]["fixed_batch_loss"] for v in ("baseline", "ft-rows", "ft", "ft-fused")}
    assert len(set(losses.values())) == 1  # the same model and batch through both paths (no Liger on CPU)
    assert all(result[v]["real_tokens_per_s"] > 0 for v in losses) and result["ft"]["speed_vs_baseline"] > 0


def test_fast_decoding_bench_runs_both_engines_in_one_process(tiny_model_dir, tmp_path):
    bench = _load("bench_fast_decoding")
    path = bench.main([
        "--tokenizer", str(tiny_model_dir), "--data", str(FAULTS_TEST), "--shapes", "tiny", "--limit", "3",
        "--max-new-tokens", "6", "--adapters", "2", "--skip-batch-16",
        "--no-cudnn-baseline", "--no-buckets-baseline", "--out", str(tmp_path),
    ])  # fmt: skip
    report = json.loads(path.read_text(encoding="utf-8"))
    (shape,) = report["shapes"]
    runs = shape["runs"]
    assert set(runs) == {"generate_b64", "graph", "graph_no_cudnn", "graph_no_buckets"}  # no fused on a CPU
    assert runs["generate_b64"]["new_tokens"] == runs["graph"]["new_tokens"] == 3 * 6  # EOS ignored
    assert runs["graph"]["engine"] == "graph" and runs["generate_b64"]["engine"] == "generate"
    assert shape["identical_to_generate_b64"] == 1.0  # fp32
    assert runs["graph_no_buckets"]["new_tokens"] == runs["graph_no_cudnn"]["new_tokens"] == 3 * 6
    assert shape["speedup"]["graph_over_generate_b64"] > 0
    stacked = shape["stacked_lora"]
    assert stacked["all"]["new_tokens"] == 2 * stacked["one"]["new_tokens"] == 2 * 3 * 6
    assert report["commit"] and report["command"].startswith("python")
