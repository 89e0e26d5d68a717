"""Two training processes (torchrun, gloo on the CPU) make the one-process run: the same loss at every
step and the same trained weights, with the ranks holding different numbers of micro-batches."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.train_helpers import run_cpu, tokenised_rows
from worker.train.config import TrainConfig
from worker.train.engine import TrainPaths

ROOT = Path(__file__).resolve().parents[3]
# 9 rows a step in 3 micro-batches of 3: rank 0 runs two of them, rank 1 one; no dropout, so that the
# two runs see the same computation.
CFG = dict(max_steps=4, batch_size=3, grad_accum=3, max_tokens_per_batch=0, lr=1e-2, seed=7, save_steps=2)
FLAGS = {"rank": 4, "alpha": 8.0, "dropout": 0.0}

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

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg, flags = json.loads(sys.argv[3]), json.loads(sys.argv[4])
    ranks = Ranks.from_env()
    torch.set_num_threads(1)
    rows = tokenised_rows(model_dir, 36, max_tokens=160)
    paths = TrainPaths(checkpoints=out / "ckpt", tensorboard=None)
    model, result, _ = run_cpu(model_dir, rows, "lora", flags, TrainConfig(**cfg), paths)
    if ranks.main:
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(out / "weights.safetensors"))
        summary = {"losses": result.losses, "tokens": result.tokens_seen, "world": ranks.world}
        (out / "result.json").write_text(json.dumps(summary))
    ranks.close()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_processes_train_exactly_like_one(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    rows = tokenised_rows(tiny_model_dir, 36, max_tokens=160)
    one = tmp_path / "one"
    model, result, _ = run_cpu(
        tiny_model_dir, rows, "lora", FLAGS, TrainConfig(**CFG), TrainPaths(one / "ckpt", None)
    )
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    two = tmp_path / "two"
    two.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", "2", str(script), str(tiny_model_dir), str(two), json.dumps(CFG),
           json.dumps(FLAGS)]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    ran = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

    got = json.loads((two / "result.json").read_text())
    assert got["world"] == 2
    assert len(got["losses"]) == len(result.losses) == CFG["max_steps"]
    assert got["losses"] == pytest.approx(result.losses, rel=1e-5)
    assert got["tokens"] == result.tokens_seen  # the tokens of both ranks, counted once
    weights = load_file(str(two / "weights.safetensors"))
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6)
    assert any(float(v.abs().sum()) > 0 for n, v in expected.items() if "lora_B" in n), "nothing trained"
    # rank 0 alone wrote checkpoints, at the same steps as one process
    written = sorted(p.name for p in (two / "ckpt").iterdir())
    assert written == sorted(p.name for p in (one / "ckpt").iterdir())


def test_one_process_shares_everything_and_sums_nothing():
    from worker.train.distributed import Ranks

    one = Ranks()
    assert one.main and not one.many and one.share([1, 2, 3]) == [1, 2, 3]
    assert one.sum(1.5, 2.0, device=torch.device("cpu")) == [1.5, 2.0]
    assert Ranks(1, 2).share([0, 1, 2, 3, 4]) == [1, 3] and Ranks(0, 2).share([0, 1, 2]) == [0, 2]
    assert not Ranks(1, 2).main


def test_gpus_flag_is_checked():
    from catalog.errors import InvalidInput

    with pytest.raises(InvalidInput, match="--gpus must be >= 1"):
        TrainConfig(gpus=0)
    with pytest.raises(InvalidInput, match="--gpus must be at most 16"):
        TrainConfig(gpus=17)
    assert TrainConfig.from_dict({"lr": 1e-3}).gpus == 1  # a spec written before --gpus existed
