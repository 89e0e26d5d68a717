"""The training loop on the tiny real Llama: it learns, accumulates gradients exactly, batches and masks
correctly, reports progress, writes TensorBoard events, evaluates, and stops when asked."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from catalog.errors import InvalidInput
from tests.worker.train_helpers import needs_bnb_cpu, run_cpu, tokenised_rows
from worker.methods import get_method
from worker.methods.full import FullConfig
from worker.models.loading import load_base
from worker.train.batching import IGNORE, collate, load_rows, plan_epoch
from worker.train.config import TrainConfig
from worker.train.engine import TrainHooks, TrainingOOM, TrainPaths, train

# A random tiny base cannot raise its logits through its (RMS-normed, 0.02-initialised) output layer
# unless that layer is adapted, so the LoRA learning check includes lm_head; real bases do not need it.
LORA_ALL_AND_HEAD = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("method", "flags", "cfg"),
    [
        (
            "lora",
            {"rank": 16, "alpha": 32, "dropout": 0.0, "target": LORA_ALL_AND_HEAD},
            TrainConfig(
                epochs=40, batch_size=4, grad_accum=1, lr=1e-2, scheduler="constant", warmup_ratio=0.0
            ),
        ),
        ("full", {}, TrainConfig(epochs=40, batch_size=4, grad_accum=1, lr=1e-2, warmup_ratio=0.0)),
        pytest.param(  # 4-bit NF4 base, 8-bit AdamW (the paged one's CPU stand-in)
            "qlora",
            {"rank": 16, "alpha": 32, "dropout": 0.0, "target": LORA_ALL_AND_HEAD},
            TrainConfig(
                epochs=40, batch_size=4, grad_accum=1, lr=1e-2, scheduler="constant", warmup_ratio=0.0
            ),
            marks=needs_bnb_cpu,
        ),
    ],
)
def test_training_drives_the_loss_down(tiny_model_dir, rows, tmp_path, method, flags, cfg):
    _, result, _ = run_cpu(tiny_model_dir, rows, method, flags, cfg, TrainPaths(tmp_path / "c"))
    assert result.steps == 40 and len(result.losses) == 40
    assert result.losses[0] > 6  # about ln(vocab 1024) = 6.93 at the start
    assert result.final_loss < 0.5 * result.losses[0]
    assert sum(result.losses[-5:]) / 5 < 0.5 * result.losses[0]


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, rows, tmp_path):
    def one_step(batch_size: int, grad_accum: int):
        cfg = TrainConfig(  # rows per micro-batch as given (no token budget), so accumulation is tested
            max_steps=1,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=1e-3,
            warmup_ratio=0.0,
            max_tokens_per_batch=0,
        )
        model, result, _ = run_cpu(
            tiny_model_dir, rows, "full", {}, cfg, TrainPaths(tmp_path / f"c{batch_size}x{grad_accum}")
        )
        return result.losses[0], dict(model.named_parameters())

    loss_big, big = one_step(4, 1)
    loss_acc, acc = one_step(2, 2)
    _, small = one_step(2, 1)
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    assert all(torch.allclose(big[n], acc[n], atol=1e-5) for n in big)  # Adam steps are ~lr = 1e-3
    assert not all(torch.allclose(big[n], small[n], atol=1e-6) for n in big)


@pytest.mark.parametrize("method", ["lora", "freeze", pytest.param("qlora", marks=needs_bnb_cpu)])
def test_gradient_checkpointing_changes_memory_not_results(tiny_model_dir, rows, tmp_path, method):
    def run(checkpointing: bool):
        cfg = TrainConfig(
            max_steps=2, batch_size=4, grad_accum=1, lr=1e-2, gradient_checkpointing=checkpointing
        )
        flags = {"dropout": 0.0} if method in ("lora", "qlora") else {}
        model, result, _ = run_cpu(
            tiny_model_dir, rows, method, flags, cfg, TrainPaths(tmp_path / str(checkpointing))
        )
        return result.losses, {n: p for n, p in model.named_parameters() if p.requires_grad}

    (plain_losses, plain), (ckpt_losses, ckpt) = run(False), run(True)
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-5)
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-5) for n in plain)


def test_progress_tensorboard_and_result(tiny_model_dir, rows, tmp_path):
    seen: list[dict] = []
    cfg = TrainConfig(
        epochs=3, batch_size=2, grad_accum=1, lr=1e-3, warmup_steps=2, logging_steps=2, save_steps=100
    )
    paths = TrainPaths(tmp_path / "ckpt", tmp_path / "tb")
    _, result, _ = run_cpu(tiny_model_dir, rows, "lora", {}, cfg, paths, TrainHooks(on_progress=seen.append))
    assert [p["step"] for p in seen] == list(range(1, 7)) and {p["total"] for p in seen} == {6}
    assert {
        "step",
        "total",
        "epoch",
        "loss",
        "lr",
        "tokens_per_s",
        "eta_s",
        "tokens_seen",
        "elapsed_s",
    } <= set(seen[0])
    assert [p["lr"] for p in seen[:2]] == pytest.approx([1e-3 / 3, 2e-3 / 3])  # warm-up: (step + 1) / (2 + 1)
    assert seen[1]["lr"] < seen[2]["lr"] == pytest.approx(1e-3) and seen[-1]["lr"] < seen[2]["lr"]
    assert seen[-1]["eta_s"] == 0 and seen[-1]["epoch"] == 3 and all(p["tokens_per_s"] > 0 for p in seen)
    assert result.tokens_seen == seen[-1]["tokens_seen"] == 3 * sum(len(ids) for ids in rows["input_ids"])
    assert [round(p["loss"], 6) for p in seen] == [round(x, 6) for x in result.losses]
    assert (
        result.train_seconds > 0 and result.peak_memory_bytes > 0 and result.final_loss == result.losses[-1]
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-000000006"]  # the final one


def test_a_short_run_still_draws_a_curve(tiny_model_dir, rows, tmp_path):
    """6 steps at the default --logging-steps 10: a point every step, not one at the end."""
    from worker.train.curves import read_curves

    cfg = TrainConfig(epochs=3, batch_size=2, grad_accum=1, lr=1e-3, save_steps=100)
    assert cfg.logging_steps == 10
    run_cpu(tiny_model_dir, rows, "lora", {}, cfg, TrainPaths(tmp_path / "ckpt", tmp_path / "tb"))
    curves = read_curves(tmp_path / "tb")
    assert [step for step, _ in curves["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_evaluation_loss_is_reported(tiny_model_dir, rows, tmp_path):
    eval_rows = tokenised_rows(tiny_model_dir, 3, skip=4)
    seen: list[dict] = []
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=1, lr=1e-2, eval_steps=2, save_steps=100)
    _, result, _ = run_cpu(
        tiny_model_dir,
        rows,
        "full",
        {},
        cfg,
        TrainPaths(tmp_path / "c"),
        TrainHooks(on_progress=seen.append),
        eval_data=eval_rows,
    )
    assert [p["step"] for p in seen if "eval_loss" in p] == [2, 4]
    assert sorted(result.eval_losses) == [2, 4] and result.eval_loss == result.eval_losses[4]
    assert 0 < result.eval_loss < 20


def test_should_stop_ends_between_steps_and_saves_nothing(tiny_model_dir, rows, tmp_path):
    seen: list[dict] = []
    hooks = TrainHooks(on_progress=seen.append, should_stop=lambda: len(seen) >= 2)
    cfg = TrainConfig(epochs=5, batch_size=2, grad_accum=1, lr=1e-3, save_steps=4)
    _, result, _ = run_cpu(tiny_model_dir, rows, "lora", {}, cfg, TrainPaths(tmp_path / "c"), hooks)
    assert result.stopped and result.steps == 2 and len(result.losses) == 2 and result.total_steps == 10
    assert not (tmp_path / "c").exists()

    _, result, _ = run_cpu(
        tiny_model_dir,
        rows,
        "lora",
        {},
        cfg,
        TrainPaths(tmp_path / "d"),
        TrainHooks(should_stop=lambda: True),
    )
    assert result.stopped and result.steps == 0 and result.final_loss is None


def test_collate_pads_with_the_pad_id_and_masks_labels(rows):
    data = load_rows(rows, max_len=1000)
    batch = collate(data, [0, 3], pad_id=3)
    n0, n3 = len(rows[0]["input_ids"]), len(rows[3]["input_ids"])
    width = max(n0, n3)
    assert batch["input_ids"].shape == (2, width)
    short = 0 if n0 < n3 else 1
    n_short = min(n0, n3)
    assert (batch["input_ids"][short, n_short:] == 3).all() and (
        batch["labels"][short, n_short:] == IGNORE
    ).all()
    assert batch["attention_mask"][short].sum() == n_short
    assert batch["labels"][0, :n0].tolist() == rows[0]["labels"]  # the prompt stays masked
    assert collate(data, [0], pad_id=3, multiple_of=8)["input_ids"].shape[1] % 8 == 0


def test_plan_is_deterministic_length_grouped_and_complete():
    lengths = [5, 90, 7, 60, 3, 80, 40, 11, 2]
    plan = plan_epoch(lengths, batch_size=2, seed=1, epoch=0)
    assert plan == plan_epoch(lengths, batch_size=2, seed=1, epoch=0)
    assert plan != plan_epoch(lengths, batch_size=2, seed=1, epoch=1)
    assert sorted(i for b in plan for i in b) == list(range(9))
    assert set(plan[0]) == {1, 5}  # the largest batch first, so out-of-memory shows at step one


def test_rows_without_answer_within_max_len_are_skipped(rows):
    prompt_lens = [labels.count(IGNORE) for labels in rows["labels"]]
    cut = sorted(prompt_lens)[1] + 2  # the two shortest prompts keep an answer token
    data = load_rows(rows, max_len=cut)
    assert len(data) == 2 and data.skipped == 2
    with pytest.raises(InvalidInput, match="--max-len"):
        load_rows(rows, max_len=min(prompt_lens))
    with pytest.raises(InvalidInput, match="no 'labels' column"):
        load_rows(Dataset.from_dict({"input_ids": [[1, 2]]}), max_len=8)


def test_train_needs_resolved_lr_and_reports_oom_as_user_error(tiny_model_dir, rows, tmp_path):
    model = get_method("full").prepare(load_base(tiny_model_dir), FullConfig())
    with pytest.raises(InvalidInput, match="--lr"):
        train(model, rows, TrainConfig(), out=TrainPaths(tmp_path / "c"), pad_id=3)
    assert issubclass(TrainingOOM, InvalidInput)


def test_token_budget_micro_batches_make_the_same_update(tiny_model_dir, rows, tmp_path):
    def one_step(budget: int):
        cfg = TrainConfig(max_steps=2, batch_size=1, grad_accum=4, lr=1e-3, max_tokens_per_batch=budget)
        model, result, _ = run_cpu(tiny_model_dir, rows, "full", {}, cfg, TrainPaths(tmp_path / f"c{budget}"))
        return result.losses, dict(model.named_parameters())

    losses_rows, rows_params = one_step(0)  # 4 micro-batches of 1 row a step
    losses_packed, packed_params = one_step(16384)  # the same 4 rows in 1 micro-batch
    assert losses_packed == pytest.approx(losses_rows, rel=1e-5)
    assert all(torch.allclose(rows_params[n], packed_params[n], atol=1e-5) for n in rows_params)


def test_by_token_budget_groups_longest_first_within_the_budget():
    from worker.train.batching import by_token_budget

    lengths = [10, 50, 20, 40, 30, 200]
    assert by_token_budget([0, 1, 2, 3, 4], lengths, 100) == [[1, 3], [4, 2, 0]]
    assert by_token_budget([0, 5], lengths, 100) == [[5], [0]]  # too wide for the budget: alone
    assert by_token_budget([0, 2], lengths, 48, multiple_of=8) == [[2, 0]]  # 2 x 24 padded tokens
    assert sorted(i for b in by_token_budget(list(range(6)), lengths, 64) for i in b) == list(range(6))
