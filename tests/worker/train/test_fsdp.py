"""A `full` job on two ranks shards the model with FSDP (worker/train/sharding.py; torchrun, gloo on the
CPU) and trains exactly like one process: the same loss at every step, the same weights, with the
ranks holding different numbers of micro-batches; rank 0 writes whole checkpoints, and a sharded run's
checkpoint resumes in one unsharded process to the same end. And the pieces: even shares, the refused
cases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from catalog.errors import InvalidInput
from tests.worker.train_helpers import run_cpu, tokenised_rows
from worker.train.checkpoints import list_checkpoints, read_state
from worker.train.config import TrainConfig
from worker.train.engine import TrainPaths
from worker.train.sharding import OPTIMIZER_FORMAT, even_share

ROOT = Path(__file__).resolve().parents[3]
# 9 rows a step in 3 micro-batches of 3: rank 0 runs two, rank 1 one and a zero-weight repeat.
CFG = dict(max_steps=4, batch_size=3, grad_accum=3, max_tokens_per_batch=0, lr=1e-4, seed=7, save_steps=2)

STEP_NOISE = 1e-6
"""Trained weights agree as the LoRA ranks' do (tests/worker/train/test_distributed.py). Adam does not see
a gradient's scale (a layer whose gradient was halved trains the same), so the first step's gradients
are compared on their own too (`GRADIENTS`): that check found FSDP's per-layer units averaging where
the root summed."""

GRADIENTS = textwrap.dedent(
    """
    import contextlib
    from worker.models.loading import load_base
    from worker.train.batching import StepPlan, load_rows
    from worker.train.engine import _accumulate

    def first_step_gradients(model_dir, rows, ranks, shard):
        from transformers import AutoTokenizer
        from worker.train.sharding import shard_model
        torch.manual_seed(0)
        model = load_base(model_dir, "cpu", dtype=torch.float32).requires_grad_(True)
        if shard:
            shard_model(model)
        rows = load_rows(rows)
        micro = StepPlan(rows, 3, 3, 7, 1, 4).micro_batches(0)
        pad = AutoTokenizer.from_pretrained(model_dir).pad_token_id
        _accumulate(model, rows, micro, pad, 1, contextlib.nullcontext, ranks, shard)
        full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g
        return {n: full(p.grad).contiguous() for n, p in model.named_parameters()}
    """
)

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from tests.worker.train_helpers import run_cpu, tokenised_rows
    from worker.train.config import TrainConfig
    from worker.train.distributed import Ranks
    from worker.train.engine import TrainPaths
    from worker.train.sharding import full_state, is_sharded

    model_dir, out, cfg = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    ranks = Ranks.from_env()
    torch.set_num_threads(1)
    rows = tokenised_rows(model_dir, 36, max_tokens=160)
    grads = first_step_gradients(model_dir, rows, ranks, shard=True)
    if ranks.main:
        save_file(grads, str(out / "grads.safetensors"))
    paths = TrainPaths(checkpoints=out / "ckpt", tensorboard=None)
    model, result, _ = run_cpu(model_dir, rows, "full", {}, TrainConfig(**cfg), paths)
    sharded = is_sharded(model)
    weights, _ = full_state(model, None)  # every rank gathers
    if ranks.main:
        save_file(weights, str(out / "weights.safetensors"))
        summary = {"losses": result.losses, "tokens": result.tokens_seen, "sharded": sharded}
        (out / "result.json").write_text(json.dumps(summary))
    ranks.close()
    """
)


def _trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_sharded_full_job_trains_like_one_process_and_resumes_unsharded(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    rows = tokenised_rows(tiny_model_dir, 36, max_tokens=160)
    one = tmp_path / "one"
    model, result, _ = run_cpu(tiny_model_dir, rows, "full", {}, TrainConfig(**CFG), TrainPaths(one / "ckpt"))
    expected = _trained(model)

    two = tmp_path / "two"
    two.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.replace("ranks = Ranks.from_env()", GRADIENTS + "ranks = Ranks.from_env()"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", "2", str(script), str(tiny_model_dir), str(two), json.dumps(CFG)]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    ran = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=380)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

    got = json.loads((two / "result.json").read_text())
    assert got["sharded"] is True
    # the first step's gradient, summed over the ranks (one ran a zero-weight repeat), is one process's
    namespace: dict = {"torch": torch}
    exec(GRADIENTS, namespace)
    from worker.train.distributed import Ranks

    one_grads = namespace["first_step_gradients"](tiny_model_dir, rows, Ranks(), shard=False)
    two_grads = load_file(str(two / "grads.safetensors"))
    assert two_grads.keys() == one_grads.keys()
    for name, grad in one_grads.items():
        torch.testing.assert_close(two_grads[name], grad, rtol=1e-4, atol=1e-7)
    assert any(float(g.abs().sum()) > 0 for g in one_grads.values())
    assert got["losses"] == pytest.approx(result.losses, rel=1e-5)
    assert got["tokens"] == result.tokens_seen  # a zero-weight repeat counts no tokens
    weights = load_file(str(two / "weights.safetensors"))
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=STEP_NOISE)
    initial = _trained(run_cpu(tiny_model_dir, rows, "full", {}, TrainConfig(**{**CFG, "max_steps": 1}),
                               TrainPaths(tmp_path / "init"), resume=False)[0])  # fmt: skip
    assert any(not torch.equal(initial[n], expected[n]) for n in expected), "nothing trained"

    # whole checkpoints, written by rank 0 at the steps one process writes them
    saved = list_checkpoints(two / "ckpt")
    assert [s for s, _ in saved] == [s for s, _ in list_checkpoints(one / "ckpt")] == [2, 4]
    assert read_state(saved[0][1])["optimizer_format"] == OPTIMIZER_FORMAT
    assert load_file(str(saved[-1][1] / "trainable.safetensors")).keys() == expected.keys()

    # the sharded run's step-2 checkpoint, resumed by one unsharded process, ends where one process did
    resumed = tmp_path / "resumed"
    shutil.copytree(saved[0][1], resumed / "ckpt" / saved[0][1].name)
    model, again, _ = run_cpu(
        tiny_model_dir, rows, "full", {}, TrainConfig(**CFG), TrainPaths(resumed / "ckpt")
    )
    assert again.resumed_from == 2 and again.losses == pytest.approx(result.losses, rel=1e-5)
    # ... writing plain checkpoints again (not labelled as a sharded run's), which resume in turn
    (last_step, last), *_ = reversed(list_checkpoints(resumed / "ckpt"))
    assert last_step == 4 and "optimizer_format" not in read_state(last)
    shutil.rmtree(resumed / "ckpt" / saved[0][1].name)
    _, more, _ = run_cpu(tiny_model_dir, rows, "full", {}, TrainConfig(**CFG), TrainPaths(resumed / "ckpt"))
    assert more.resumed_from == 4 and more.steps == 4  # loaded (optimizer included), nothing left to run
    for name, value in _trained(model).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=STEP_NOISE)


def test_even_shares_repeat_the_first_micro_batch_with_no_weight():
    micro = [[0, 1], [2, 3], [4]]
    assert even_share([[0, 1], [4]], micro, 2) == [([0, 1], True), ([4], True)]
    assert even_share([[2, 3]], micro, 2) == [([2, 3], True), ([0, 1], False)]
    assert even_share([], micro, 1) == [([0, 1], False)]


def test_fsdp_is_a_flag_and_a_plain_run_ignores_it(tiny_model_dir, tmp_path):
    assert TrainConfig().fsdp is True and TrainConfig(fsdp=False).fsdp is False
    rows = tokenised_rows(tiny_model_dir, 6, max_tokens=160)
    cfg = TrainConfig(**{**CFG, "max_steps": 1, "batch_size": 2, "grad_accum": 1})
    model, result, _ = run_cpu(tiny_model_dir, rows, "full", {}, cfg, TrainPaths(tmp_path / "c"))
    assert result.steps == 1  # one process: nothing to shard
    path = list_checkpoints(tmp_path / "c")[0][1]
    assert "optimizer_format" not in read_state(path)


def test_a_plain_checkpoint_does_not_resume_into_a_sharded_model(tiny_model_dir, tmp_path):
    """A one-process gloo group is enough to shard for real; the message says what to do."""
    import torch.distributed as dist

    from worker.train.checkpoints import load_checkpoint
    from worker.train.sharding import is_sharded, shard_model

    rows = tokenised_rows(tiny_model_dir, 6, max_tokens=160)
    cfg = TrainConfig(**{**CFG, "max_steps": 1, "batch_size": 2, "grad_accum": 1})
    model, _, _ = run_cpu(tiny_model_dir, rows, "full", {}, cfg, TrainPaths(tmp_path / "c"))
    path = list_checkpoints(tmp_path / "c")[0][1]
    store = dist.FileStore(str(tmp_path / "pg"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shard_model(model)
        assert is_sharded(model)
        with pytest.raises(InvalidInput, match="written by an unsharded run: resume it with --no-fsdp"):
            load_checkpoint(path, model, None, None)
    finally:
        dist.destroy_process_group()
