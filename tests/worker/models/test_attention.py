"""ft's training and generation never let scaled_dot_product_attention pick cuDNN attention (it builds a
graph for every new shape: see worker/models/attention.py), and leave PyTorch's setting as they found it."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.worker.train_helpers import run_cpu, tokenised_rows
from worker.evaluation.generation import GenerationConfig, generate
from worker.models.attention import without_cudnn_attention
from worker.train.config import TrainConfig
from worker.train.engine import TrainPaths

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cudnn_seen():
    """The cuDNN-attention flag at every module forward call made while the test runs."""
    seen: list[bool] = []
    handle = register_module_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    yield seen
    handle.remove()


def test_the_context_excludes_cudnn_only_and_restores():
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with without_cudnn_attention():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_generation_runs_without_cudnn_attention(tiny_model_dir, cudnn_seen):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    generate(model, tok, ["发动机漏油", "a b c"], GenerationConfig(max_new_tokens=3, batch_size=2))
    assert cudnn_seen and not any(cudnn_seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_training_and_its_evaluation_run_without_cudnn_attention(tiny_model_dir, rows, tmp_path, cudnn_seen):
    cfg = TrainConfig(epochs=1, batch_size=2, grad_accum=1, lr=1e-3, eval_steps=1, save_steps=100)
    eval_rows = tokenised_rows(tiny_model_dir, 2, skip=4)
    _, result, _ = run_cpu(
        tiny_model_dir, rows, "lora", {}, cfg, TrainPaths(tmp_path / "c"), eval_data=eval_rows
    )
    assert result.steps == 2 and result.eval_losses
    assert cudnn_seen and not any(cudnn_seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()
