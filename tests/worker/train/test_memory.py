"""The memory estimate (worker/train/memory.py): within 15% of every peak the training bench measured on
an H200 (bench/results/train-throughput-*.json, the same shapes, rows and settings); the parameter count
of a real model; gradient checkpointing chosen when the job only fits with it; a job that fits neither
way refused with what to lower; FSDP's shards; and `ft submit train --dry-run` printing it."""

from __future__ import annotations

import importlib.util
import json

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from catalog.errors import InvalidInput
from tests.conftest import REPO
from worker.methods import get_method
from worker.train.config import TrainConfig
from worker.train.memory import GIB, Shape, estimate_peak, micro_batch_tokens, plan_checkpointing


def _bench():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured_cases():
    """(label, shape config, lora flags, train settings, longest row, measured GiB) of every ft variant."""
    bench = _bench()
    for path in sorted((REPO / "bench" / "results").glob("train-throughput-*.json")):
        report = json.loads(path.read_text())
        for data, result in report["results"].items():
            for variant, measured in result.items():
                if variant == "baseline" or not (
                    isinstance(measured, dict) and "peak_memory_gib" in measured
                ):
                    continue
                settings = report["variants"][variant]
                lora = {**report["lora"], **settings.get("lora", {})}
                sizes = {k: report["settings"][k] for k in ("batch_size", "grad_accum")}
                train = {**sizes, "max_tokens_per_batch": settings["max_tokens_per_batch"],
                         "fused_kernels": settings["fused_kernels"], "optimizer": "adamw"}  # fmt: skip
                label = f"{report['shape']} {data} {variant}"
                yield (
                    label,
                    bench.SHAPES[report["shape"]],
                    lora,
                    train,
                    result["max_tokens"],
                    measured["peak_memory_gib"],
                )


def test_every_measured_peak_is_estimated_within_15_percent():
    cases = list(measured_cases())
    assert len(cases) >= 20  # both shapes, three row sets, rows / token budget / fused / int8 variants
    errors = {}
    for label, shape, lora, train, longest, gib in cases:
        method_cfg = get_method("lora").make_config(lora)
        est = estimate_peak(shape, "lora", method_cfg, TrainConfig(**train), longest_row=longest, cuda=True)
        errors[label] = est.total_bytes / GIB / gib - 1
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= 0.15, f"{worst}: {errors[worst]:+.1%}"


def test_the_parameter_count_is_the_real_models(tiny_model_dir):
    for tied in (True, False):
        config = AutoConfig.from_pretrained(tiny_model_dir)
        config.tie_word_embeddings = tied
        model = AutoModelForCausalLM.from_config(config)
        assert Shape.from_config(config.to_dict()).params == sum(p.numel() for p in model.parameters())
    qwen = _bench().SHAPES["qwen2.5-1.5b"]
    assert 1.50e9 < Shape.from_config(qwen).params < 1.56e9  # Qwen2.5-1.5B: 1.54B with its q/k/v biases


def test_micro_batches_are_the_largest_the_token_budget_can_group():
    assert micro_batch_tokens(16384, 8, 32, 590) == 16384  # shorter rows can fill the whole budget
    assert micro_batch_tokens(16384, 8, 4, 100) == 4 * 104  # a step of 4 short rows is one micro-batch
    assert micro_batch_tokens(16384, 8, 32, 20000) == 20000  # a row wider than the budget goes alone
    assert micro_batch_tokens(0, 8, 32, 590) == 8 * 592  # no budget: batch_size rows
    # what by_token_budget really builds stays within it: one 9000-token row among 2000-token ones
    from worker.train.batching import by_token_budget

    lengths = [9000] + [2000] * 31
    built = max(
        len(b) * max(lengths[i] for i in b) for b in by_token_budget(list(range(32)), lengths, 16384, 8)
    )
    assert built <= micro_batch_tokens(16384, 8, 32, 9000)


def _plan(gpu_gib: float, **train):
    shape = _bench().SHAPES["qwen2.5-1.5b"]
    cfg = TrainConfig(batch_size=8, grad_accum=4, **train)
    lora = get_method("lora").make_config({"rank": 16, "dropout": 0.0})
    return plan_checkpointing(
        shape, "lora", lora, cfg, longest_row=2048, gpu_bytes=int(gpu_gib * GIB), fused=True
    )


def test_checkpointing_is_chosen_only_when_the_job_does_not_fit_without_it():
    assert _plan(141).checkpointing is False  # ~44 GiB fits an H200
    small = _plan(24)
    assert small.checkpointing is True and small.total_bytes < 0.92 * 24 * GIB
    assert _plan(24, gradient_checkpointing=True).checkpointing is True
    with pytest.raises(
        InvalidInput, match=r"needs about .* GiB and the GPU has 24.0 GiB.*add --gradient-checkpointing"
    ):
        _plan(24, gradient_checkpointing=False)  # asked for off: refused rather than turned on


def test_a_job_that_fits_neither_way_is_refused_with_what_to_lower():
    with pytest.raises(InvalidInput) as refused:
        _plan(8, max_tokens_per_batch=65536)
    message = str(refused.value)
    assert "the GPU has 8.0 GiB" in message and "--max-tokens-per-batch (now 65536)" in message
    assert "--method qlora" in message and "add --gradient-checkpointing" not in message  # it was tried


def test_fsdp_shards_weights_and_state_not_activations():
    shape = _bench().SHAPES["qwen2.5-7b"]
    cfg = TrainConfig(batch_size=2, grad_accum=1, gradient_checkpointing=True)
    full = get_method("full").make_config({})
    one = estimate_peak(shape, "full", full, cfg, longest_row=2048, cuda=True)
    assert one.weights + one.trainable_state > 120 * GIB  # ~7.6B x (4 + 4 + 8 + 2) bytes
    assert one.trainable_state == 14 * one.weights // 4  # gradients, moments, autocast copy: 14 bytes
    with pytest.raises(InvalidInput, match="the GPU has 80.0 GiB"):  # one H100
        plan_checkpointing(shape, "full", full, cfg, longest_row=2048, gpu_bytes=80 * GIB, fused=True)
    four = plan_checkpointing(
        shape, "full", full, cfg, longest_row=2048, gpu_bytes=80 * GIB, fused=True, shards=4
    )
    assert four.activations == one.activations and four.weights == one.weights // 4


def test_dry_run_prints_the_estimate(ft, tiny_model_dir, tmp_path):
    from tests.conftest import FAULTS_TRAIN

    ft("init")
    ft("datasets", "add", "faults", str(FAULTS_TRAIN), "--format", "triples")
    ft("models", "add", "tiny", "--path", str(tiny_model_dir))
    out = ft("submit", "train", "--method", "lora", "-m", "tiny", "-d", "faults", "--dry-run").output
    assert "memory: " in out and "GiB peak (weights" in out and "gradient checkpointing off (unset:" in out
    data = json.loads(
        ft("submit", "train", "--method", "lora", "-m", "tiny", "-d", "faults", "--dry-run", "--json").stdout
    )
    assert data["memory"]["peak_bytes"] > 0 and data["memory"]["micro_tokens"] > 0


def test_an_architecture_it_does_not_read_gets_no_estimate():
    from transformers import GPT2Config

    from worker.train.memory import UnknownShape

    lora = get_method("lora").make_config({})
    with pytest.raises(UnknownShape, match="hidden_size"):
        estimate_peak(GPT2Config().to_dict(), "lora", lora, TrainConfig(), longest_row=512)


def test_a_gpu_job_is_planned_from_its_base_and_rows_before_loading(tiny_model_dir):
    """What a job process on a GPU runs first (worker/train/recipe.py fit_memory), here with the
    GPU's memory given: unset checkpointing decided, a hopeless job refused, no config no estimate."""
    from tests.worker.train_helpers import tokenised_rows
    from worker.train.recipe import fit_memory

    rows = tokenised_rows(tiny_model_dir, 8, max_tokens=160)
    lora, method = get_method("lora").make_config({}), get_method("lora")
    cfg = TrainConfig(batch_size=2, grad_accum=1, lr=1e-3, epochs=1, optimizer="adamw")
    roomy, est = fit_memory(tiny_model_dir, method, lora, cfg, rows, gpu_bytes=80 * GIB)
    assert roomy.gradient_checkpointing is False and est.total_bytes > 0
    assert est.micro_tokens == 2 * ((max(len(r) for r in rows["input_ids"]) + 7) // 8 * 8)  # 2 rows, padded
    tight = est.total_bytes * 0.8 / 0.92  # fits only with checkpointing (the tiny model's activations)
    chosen, _ = fit_memory(tiny_model_dir, method, lora, cfg, rows, gpu_bytes=int(tight))
    assert chosen.gradient_checkpointing is True
    with pytest.raises(InvalidInput, match="needs about"):
        fit_memory(tiny_model_dir, method, lora, cfg, rows, gpu_bytes=1 << 20)
    assert fit_memory(tiny_model_dir.parent, method, lora, cfg, rows, gpu_bytes=1 << 20) == (cfg, None)
