"""Helpers for the training-engine tests: real rows of the fault-triples data tokenised with the tiny
model's tokenizer into the `input_ids` / `labels` Dataset that the conversion step produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from tests.conftest import FAULTS_TRAIN
from worker.methods import get_method
from worker.models.loading import bitsandbytes_cpu_problem
from worker.train.recipe import run_training

_BNB_CPU_PROBLEM = bitsandbytes_cpu_problem()
needs_bnb_cpu = pytest.mark.skipif(
    _BNB_CPU_PROBLEM is not None, reason=f"bitsandbytes cannot quantise on this CPU: {_BNB_CPU_PROBLEM}"
)
"""For tests that train a quantised base (qlora, lora --base-bits 8) on the CPU."""


def run_cpu(base_dir, data, method, flags, cfg, paths, *args, **kwargs):
    """`run_training` pinned to the CPU (fp32, deterministic) even on a machine with a GPU; `method` may
    be a name, `flags` a dict, and `cfg` is resolved with the method's defaults as submit does."""
    registered = get_method(method) if isinstance(method, str) else method
    method_cfg = registered.make_config(flags) if isinstance(flags, dict) else flags
    cfg = cfg.with_method_defaults(registered)
    return run_training(base_dir, data, registered, method_cfg, cfg, paths, *args, device="cpu", **kwargs)


def tokenised_rows(model_dir: Path, n: int, max_tokens: int = 96, skip: int = 0) -> Dataset:
    """`n` rows (after skipping `skip` eligible ones) whose prompt + answer fit in `max_tokens` tokens:
    prompt = instruction + input with labels -100, then output + eos."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids_col, labels_col = [], []
    with open(FAULTS_TRAIN, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompt = tok(row["instruction"] + row["input"], add_special_tokens=False)["input_ids"]
            answer = tok(row["output"] + tok.eos_token, add_special_tokens=False)["input_ids"]
            if len(prompt) + len(answer) > max_tokens:
                continue
            if skip:
                skip -= 1
                continue
            ids_col.append(prompt + answer)
            labels_col.append([-100] * len(prompt) + answer)
            if len(ids_col) == n:
                break
    assert len(ids_col) == n, "not enough short rows in the reference data"
    return Dataset.from_dict({"input_ids": ids_col, "labels": labels_col})
