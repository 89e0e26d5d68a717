"""The recipe a train job runs: load the base as the method wants it, make it trainable, train.

    model, result, counts = run_training(base_dir, train_ds, get_method("lora"), LoraMethodConfig(rank=16),
                                         cfg, TrainPaths(ckpt_dir, tb_dir), hooks)

`cfg` arrives resolved (the method's lr, epochs and optimizer filled in at submit, by
`TrainConfig.with_method_defaults`); nothing is looked up or defaulted again here. With `parent` (the
verified artifact directory of `--from ADAPTER`), training starts from the parent's weights: a whole
model (full) is loaded from it instead of the base, other formats put its tensors into the freshly
prepared model (`ArtifactFormat.continue_from`). A resumed checkpoint then overrides both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from catalog.errors import InvalidInput
from worker.methods import Method
from worker.models.loading import ParamCounts, count_parameters, default_device, load_base, load_tokenizer
from worker.models.loading import pad_token_id as tokenizer_pad_id
from worker.train.config import TrainConfig
from worker.train.distributed import Ranks
from worker.train.engine import TrainHooks, TrainPaths, TrainResult, train
from worker.train.kernels import apply_fused_kernels, fused_kernels_problem_for
from worker.train.memory import MemoryEstimate, UnknownShape, plan_checkpointing
from worker.train.optimization import seed_everything

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def run_training(
    base_model_dir: Path | str,
    train_data: Any,
    method: Method,
    method_cfg: Any,
    cfg: TrainConfig,
    paths: TrainPaths,
    hooks: TrainHooks | None = None,
    *,
    eval_data: Any = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    parent: Path | None = None,
) -> tuple[nn.Module, TrainResult, ParamCounts]:
    """Load the base, make it trainable with `method` and its config, train. Quantised methods are
    refused before anything is loaded when bitsandbytes cannot run on the device."""
    if not isinstance(method_cfg, method.config):
        raise TypeError(
            f"--method {method.name} takes a {method.config.__name__}, not {type(method_cfg).__name__}"
        )
    device = torch.device(device) if device is not None else default_device()
    load_kwargs = method.load_kwargs(method_cfg, device)
    tokenizer = load_tokenizer(base_model_dir, trust_remote_code=trust_remote_code)
    seed_everything(cfg.seed)  # adapter initialisation
    whole = parent is not None and not method.artifact.shares_base
    weights_dir = parent if whole else base_model_dir
    estimate = None
    if device.type == "cuda":  # refuse what cannot fit before loading it; decide unset checkpointing
        gpu_bytes = torch.cuda.get_device_properties(device).total_memory
        cfg, estimate = fit_memory(Path(weights_dir), method, method_cfg, cfg, train_data, gpu_bytes)
    sharded = not method.artifact.shares_base and cfg.fsdp and Ranks.current().many
    # FSDP: loaded on the CPU, each layer moves to the GPU as its shard, so no GPU holds the whole model
    base = load_base(
        weights_dir, "cpu" if sharded else device, trust_remote_code=trust_remote_code, **load_kwargs
    )
    if cfg.fused_kernels:
        log.info("%s", apply_fused_kernels(base, device_type=device.type))
    model = method.prepare(base, method_cfg)
    if sharded:
        from worker.train.sharding import shard_model

        log.info("sharding the model over %d ranks (FSDP)", Ranks.current().world)
        shard_model(model)
    if parent is not None and not whole:
        if method.artifact.continue_from is None:
            raise InvalidInput(f"--method {method.name} artifacts cannot be continued (--from)")
        method.artifact.continue_from(model, parent)
    if parent is not None:
        log.info("continuing from %s", parent)
    counts = count_parameters(model)
    result = train(
        model, train_data, cfg, out=paths, hooks=hooks, pad_id=tokenizer_pad_id(tokenizer),
        eval_data=eval_data, resume=resume,
    )  # fmt: skip
    result.memory_estimate_bytes = estimate.total_bytes if estimate is not None else None
    result.gradient_checkpointing = bool(cfg.gradient_checkpointing)
    return model, result, counts


def fit_memory(
    weights_dir: Path,
    method: Method,
    method_cfg: Any,
    cfg: TrainConfig,
    train_data: Any,
    gpu_bytes: int,
) -> tuple[TrainConfig, MemoryEstimate | None]:
    """The config to train with on a GPU of `gpu_bytes` (gradient checkpointing decided when unset) and
    the memory estimate (worker/train/memory.py), or InvalidInput when the job cannot fit it; no
    estimate without the base's config.json or for an architecture the estimate does not read."""
    config_path = weights_dir / "config.json"
    if not config_path.is_file():
        return cfg, None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    longest = max((len(ids) for ids in train_data["input_ids"]), default=1)  # not load_rows: train() does
    fused = cfg.fused_kernels and fused_kernels_problem_for(config.get("model_type"), "cuda") is None
    ranks = Ranks.current()
    shards = ranks.world if not method.artifact.shares_base and cfg.fsdp and ranks.many else 1
    try:
        estimate = plan_checkpointing(
            config, method.name, method_cfg, cfg, longest_row=longest,
            gpu_bytes=gpu_bytes, fused=fused, shards=shards,
        )  # fmt: skip
    except UnknownShape as exc:
        log.info("no memory estimate: %s", exc)
        return cfg, None
    log.info("memory estimate: %s", estimate.describe())
    return dataclasses.replace(cfg, gradient_checkpointing=estimate.checkpointing), estimate
