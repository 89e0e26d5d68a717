"""Checkpoints: atomic with a completion marker, only the last K kept, restored exactly; a resumed run
continues from the saved step and ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import pickle
import random

import pytest
import torch
from torch import nn

from catalog.errors import InvalidInput
from tests.worker.train_helpers import run_cpu
from worker.train.checkpoints import (
    MARKER,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from worker.train.config import TrainConfig
from worker.train.engine import TrainHooks, TrainPaths

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_only_the_last_k_complete_checkpoints_are_kept(tmp_path):
    model, optimizer, scheduler = _small_run()
    stale = tmp_path / ".tmp-step-000000002-999999"
    stale.mkdir(parents=True)
    for step in range(1, 5):
        _step(model, optimizer, scheduler)
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, {"losses": []}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(3), checkpoint_name(4)]
    assert json.loads((tmp_path / checkpoint_name(4) / "state.json").read_text())["step"] == 4


def test_a_checkpoint_without_a_valid_marker_is_ignored(tmp_path):
    model, optimizer, scheduler = _small_run()
    good = save_checkpoint(tmp_path, 5, model, optimizer, scheduler, {}, keep=3)
    unmarked = tmp_path / checkpoint_name(9)
    unmarked.mkdir()  # e.g. a copy in progress
    for name in ("trainable.safetensors", "state.json"):
        (unmarked / name).write_bytes((good / name).read_bytes())
    truncated = tmp_path / checkpoint_name(7)
    truncated.mkdir()
    (truncated / MARKER).write_text((good / MARKER).read_text())
    (truncated / "state.json").write_text("{")
    assert latest_checkpoint(tmp_path) == good
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    save_checkpoint(tmp_path, 6, model, optimizer, scheduler, {}, keep=3)  # tidies the garbage up
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(5), checkpoint_name(6)]


def test_load_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = _small_run()
    _step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"tokens_seen": 12}, keep=1)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = (torch.rand(3), random.random())
    _step(model, optimizer, scheduler)

    fresh, fresh_opt, fresh_sched = _small_run()
    state = load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert state["tokens_seen"] == 12 and state["step"] == 1
    assert all(torch.equal(weights[n], p) for n, p in fresh.named_parameters())
    assert fresh_sched.last_epoch == 1 and fresh_opt.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]

    other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    with pytest.raises(InvalidInput, match="does not match this model's trainable parameters"):
        load_checkpoint(path, other, torch.optim.AdamW(other.parameters()), fresh_sched)


def _lora_run(model_dir, rows, ckpt, stop_after=None, lora=None, **overrides):
    seen: list[dict] = []
    hooks = TrainHooks(
        on_progress=seen.append, should_stop=lambda: stop_after is not None and len(seen) >= stop_after
    )
    args = {
        "epochs": 4,
        "batch_size": 2,
        "grad_accum": 1,
        "lr": 5e-3,
        "save_steps": 3,
        "save_total_limit": 2,
    } | overrides
    model, result, _ = run_cpu(
        model_dir, rows, "lora", lora or {"dropout": 0.1}, TrainConfig(**args), TrainPaths(ckpt), hooks
    )
    return model, result, seen


def test_resume_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(
    tiny_model_dir, rows, tmp_path
):
    straight, straight_result, _ = _lora_run(tiny_model_dir, rows, tmp_path / "straight")
    assert straight_result.steps == 8 and straight_result.resumed_from is None

    _, first, _ = _lora_run(tiny_model_dir, rows, tmp_path / "broken", stop_after=7)  # stops before step 8
    assert first.stopped and first.steps == 7
    assert [s for s, _ in list_checkpoints(tmp_path / "broken")] == [3, 6]

    resumed, second, seen = _lora_run(tiny_model_dir, rows, tmp_path / "broken")
    assert second.resumed_from == 6 and [p["step"] for p in seen] == [7, 8]  # never goes back
    assert second.steps == 8 and not second.stopped
    assert second.losses == straight_result.losses  # steps 1-6 from the checkpoint, 7-8 recomputed
    assert second.tokens_seen == straight_result.tokens_seen
    trained = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    for name, param in resumed.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[name]), name  # bit-identical on CPU

    _, again, seen = _lora_run(tiny_model_dir, rows, tmp_path / "broken")  # already complete
    assert again.resumed_from == 8 and again.steps == 8 and seen == [] and again.losses == second.losses


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_model_dir, rows, tmp_path):
    _lora_run(tiny_model_dir, rows, tmp_path / "c", max_steps=3)
    with pytest.raises(InvalidInput, match="written for other data or settings"):
        _lora_run(tiny_model_dir, rows, tmp_path / "c", max_steps=3, batch_size=4)
    _, fresh, _ = _lora_run(tiny_model_dir, rows, tmp_path / "other", max_steps=3, batch_size=4)
    assert fresh.resumed_from is None
    with pytest.raises(InvalidInput, match="does not match this model's trainable parameters"):
        _lora_run(tiny_model_dir, rows, tmp_path / "c", max_steps=3, lora={"rank": 4})


class _Payload:
    """Unpickling this runs code: it writes a marker file (what a crafted checkpoint file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_a_checkpoint_never_runs(tiny_model_dir, rows, tmp_path):
    ckpt, marker = tmp_path / "ckpt", tmp_path / "payload-ran"
    _, first, _ = _lora_run(tiny_model_dir, rows, ckpt, stop_after=4)
    (step, path), *_ = reversed(list_checkpoints(ckpt))
    torch.save({"python": _Payload(marker)}, path / "rng.pt")  # where ft kept a pickle before
    (path / "extra.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    _, second, _ = _lora_run(tiny_model_dir, rows, ckpt)
    assert not marker.exists() and second.resumed_from == step and second.steps == 8
