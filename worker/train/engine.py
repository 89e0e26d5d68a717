"""The training loop shared by every method (worker/train/recipe.py loads and prepares the model).

    result = train(model, train_ds, cfg, out=TrainPaths(ckpt_dir, tb_dir), hooks=hooks, pad_id=pad)

Why our own loop on plain torch rather than transformers.Trainer: the product needs checkpoints that
are atomic (written aside, marked complete, renamed) and hold only the trainable weights; a data
position that is a pure function of the optimizer step, so a resumed job never replays or skips a
batch (with length grouping too); progress, cancellation and a CUDA out-of-memory message that names
the flags to change, all between optimizer steps; and one path for peft prompt-learning models, 4-bit
bases and bitsandbytes' paged optimizers. The HF Trainer can be bent to most of that with callbacks,
but it writes `checkpoint-N` in place (a crash leaves a half directory that its own resume would pick),
owns the data order, and is thousands of lines to reason through; this loop reads top to bottom.
accelerate adds nothing on one device (autocast, clipping and fused AdamW are plain torch).

Multi-GPU (`--gpus N`, worker/train/distributed.py): the step plan (worker.batching) is global and
deterministic, so rank r runs the micro-batches r, r + N, ... of each step, the trainable gradients
are summed over the ranks once a step, and rank 0 alone writes checkpoints, TensorBoard and progress.

Loss: each micro-batch's mean loss is weighted by its share of the step's target tokens, so that
gradient accumulation gives the same update as one large batch. bf16 autocast on CUDA, fp32 on CPU.
Attention never takes cuDNN's kernel, which plans anew for every batch width (worker/models/attention.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catalog.errors import InvalidInput
from worker.methods import compute_dtype
from worker.models.attention import without_cudnn_attention
from worker.train.batching import Rows, StepPlan, collate, load_rows
from worker.train.checkpoints import latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from worker.train.config import TrainConfig
from worker.train.distributed import Ranks
from worker.train.optimization import build_optimizer, build_scheduler, seed_everything
from worker.train.sharding import even_share, full_state, is_sharded

log = logging.getLogger(__name__)

ONE_PROCESS = Ranks()


@dataclass(frozen=True)
class TrainPaths:
    """Where a run writes: its checkpoints, and TensorBoard event files (None: none)."""

    checkpoints: Path
    tensorboard: Path | None = None


def _no_progress(progress: dict[str, Any]) -> None:
    pass


def _never() -> bool:
    return False


@dataclass(frozen=True)
class TrainHooks:
    """Called by the loop: `on_progress(dict)` after every optimizer step (keys: step, total, epoch, loss,
    lr, tokens_per_s, eta_s, tokens_seen, elapsed_s, and eval_loss when measured); `should_stop()`
    before every step: True ends the run at once (stopped=True), saving nothing more."""

    on_progress: Callable[[dict[str, Any]], None] = _no_progress
    should_stop: Callable[[], bool] = _never
    score: Callable[[nn.Module, int], dict[str, float]] | None = None
    """At each evaluation (every --eval-steps and the last step; rank 0): generate with the model at
    that step and score it (worker/train/scoring.py). The summaries are kept per step in checkpoints
    and in `TrainResult.eval_metrics`, and go to TensorBoard as eval/<key>."""


@dataclass
class TrainResult:
    """What a run did; losses and tokens cover resumed runs from step one."""

    steps: int
    total_steps: int
    tokens_seen: int
    final_loss: float | None
    """Loss of the last optimizer step."""
    losses: list[float]
    """Loss of every optimizer step."""
    train_seconds: float
    peak_memory_bytes: int
    """CUDA max_memory_allocated, or the process's peak RSS on CPU."""
    stopped: bool
    eval_loss: float | None = None
    skipped_rows: int = 0
    """Training rows with no answer token within --max-len."""
    resumed_from: int | None = None
    eval_losses: dict[int, float] = field(default_factory=dict)
    eval_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    """The `score` hook's summary at each step it ran (resumed runs included)."""
    memory_estimate_bytes: int | None = None
    """What worker/train/memory.py estimated the peak would be, on a GPU (set by the recipe)."""
    gradient_checkpointing: bool | None = None
    """Whether it ran with gradient checkpointing (decided by the estimate when the flag was unset)."""


class TrainingOOM(InvalidInput):
    """The GPU ran out of memory; the message says which flags reduce memory."""


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _oom_error(step: int, cfg: TrainConfig, longest: int, device: torch.device) -> TrainingOOM:
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    return TrainingOOM(
        f"CUDA out of memory at step {step} (micro-batches of "
        + (
            f"up to {cfg.max_tokens_per_batch} tokens"
            if cfg.max_tokens_per_batch
            else f"{cfg.batch_size} rows"
        )
        + f", rows of up to {longest} tokens, {total:.0f} GiB GPU): lower "
        + (
            "--max-tokens-per-batch"
            if cfg.max_tokens_per_batch
            else "--batch-size (raise --grad-accum to keep the effective batch)"
        )
        + ", add --gradient-checkpointing, lower --max-len, or use --method qlora"
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocation failure, however it surfaced: torch's OutOfMemoryError, or an accelerator or
    cuBLAS error raised while another process held the memory."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


@torch.no_grad()
@without_cudnn_attention()
def evaluate(model: nn.Module, rows: Rows, batch_size: int, pad_id: int, autocast: Any, pad_to: int) -> float:
    """Mean loss per target token over `rows`."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda i: rows.lengths[i])
    total = torch.zeros((), device=device, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(rows, idx, pad_id, pad_to).items()}
        with autocast():
            loss = model(**batch).loss
        total += loss.double() * sum(rows.targets[i] for i in idx)
    model.train(was_training)
    return float(total) / sum(rows.targets)


def _precision(device: torch.device) -> tuple[Callable[[], Any], int]:
    """(autocast context factory, pad multiple): bf16 autocast on a bf16 GPU, plain fp32 otherwise."""
    if device.type == "cuda" and compute_dtype(device) == torch.bfloat16:
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), 8
    return contextlib.nullcontext, 1


def _training_mode(model: nn.Module, cfg: TrainConfig) -> Callable[[], None]:
    """Switch the model to training (no KV cache, optional activation checkpointing); returns the undo."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is not None:
        config.use_cache = False
    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", True):
            raise InvalidInput("--gradient-checkpointing is not supported by this model's architecture")
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()

    def restore() -> None:
        if use_cache is not None:
            config.use_cache = use_cache
        model.eval()

    return restore


@without_cudnn_attention()
def _accumulate(
    model: nn.Module,
    rows: Rows,
    micro: list[list[int]],
    pad_id: int,
    pad_to: int,
    autocast: Any,
    ranks: Ranks = ONE_PROCESS,
    sharded: bool = False,
) -> tuple[float, int]:
    """Forward and backward over this rank's share of one step's micro-batches, each weighted by its
    share of the whole step's target tokens; returns (this rank's part of the step's loss per target
    token, input tokens processed here). Summed over the ranks, both are the one-process values.
    Sharded, every rank runs as many passes as the busiest one (repeats weighted 0)."""
    device = model_device(model)
    n_targets = sum(rows.targets[i] for idx in micro for i in idx)
    total, tokens = torch.zeros((), device=device), 0
    mine = ranks.share(micro)
    passes = even_share(mine, micro, ranks.max(len(mine), device)) if sharded else [(m, True) for m in mine]
    for idx, counts in passes:
        batch = collate(rows, idx, pad_id, pad_to)
        tokens += int(batch["attention_mask"].sum()) if counts else 0
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        weight = sum(rows.targets[i] for i in idx) / n_targets if counts else 0.0
        with autocast():
            loss = model(**batch).loss * weight
        loss.backward()
        total += loss.detach().float()
    return float(total), tokens


def _log(writer: Any, progress: dict[str, Any], window: list[float]) -> None:
    """TensorBoard scalars (loss averaged since the last write) and a log line."""
    step, loss = progress["step"], sum(window) / len(window)
    if writer is not None:
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", progress["lr"], step)
        writer.add_scalar("train/tokens_per_s", progress["tokens_per_s"], step)
    log.info(
        "step %d/%d loss %.4f lr %.3g %.0f tok/s",
        step,
        progress["total"],
        loss,
        progress["lr"],
        progress["tokens_per_s"],
    )


def _tensorboard(log_dir: Path | None, start: int) -> Any:
    """A SummaryWriter (events after `start` replace those of an interrupted run), or None."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # a lean GPU image; training should not fail for want of its charts
        log.warning("tensorboard is not installed: no event files are written to %s", log_dir)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=start + 1 if start else None)


def _fingerprint(cfg: TrainConfig, rows: Rows, plan: StepPlan) -> dict[str, Any]:
    """What must match for a checkpoint's data position to mean the same thing on resume."""
    return {
        "rows": len(rows),
        "tokens": sum(rows.lengths),
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "seed": cfg.seed,
        "total_steps": plan.total_steps,
    }


def train(
    model: nn.Module,
    train_data: Any,
    cfg: TrainConfig,
    *,
    out: TrainPaths,
    hooks: TrainHooks | None = None,
    pad_id: int,
    eval_data: Any = None,
    resume: bool = True,
) -> TrainResult:
    """Train `model`'s trainable parameters on `train_data` (input_ids + labels rows) per `cfg`,
    resuming from the last complete checkpoint under `out.checkpoints` when `resume`."""
    if cfg.lr is None or cfg.optimizer is None or cfg.epochs is None:
        raise InvalidInput(
            "--lr, --epochs or --optimizer is unset: resolve the config with cfg.with_method_defaults(method)"
        )
    hooks = hooks or TrainHooks()
    ranks = Ranks.current()
    sharded = ranks.many and is_sharded(model)  # FSDP (worker/train/sharding.py): every rank in every pass
    if sharded and hooks.score is not None:
        raise InvalidInput("--eval-metric cannot generate with a sharded (FSDP) full job: add --no-fsdp")
    device = model_device(model)
    rows = load_rows(train_data).sample(cfg.max_samples, cfg.seed)
    eval_rows = load_rows(eval_data, what="evaluation data") if eval_data is not None else None
    plan = StepPlan(rows, cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.epochs, cfg.max_steps)
    fingerprint = _fingerprint(cfg, rows, plan)
    seed_everything(cfg.seed)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, plan.total_steps)
    state: dict[str, Any] = {
        "tokens_seen": 0, "losses": [], "train_seconds": 0.0, "eval_losses": {}, "eval_metrics": {}
    }  # fmt: skip
    start = 0
    checkpoint = latest_checkpoint(out.checkpoints) if resume else None
    if checkpoint is not None:
        saved = read_state(checkpoint).get("fingerprint")
        if saved != fingerprint:
            raise InvalidInput(
                f"checkpoint {checkpoint} was written for other data or settings ({saved} vs {fingerprint}): "
                f"delete {out.checkpoints} to start over"
            )
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        state.setdefault("eval_metrics", {})
        start = state["step"]
        log.info("resuming from %s at step %d of %d", checkpoint, start, plan.total_steps)

    autocast, pad_to = _precision(device)
    restore = _training_mode(model, cfg)
    writer = _tensorboard(out.tensorboard, start) if ranks.main else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    eval_every = cfg.eval_steps or cfg.save_steps
    # A short run still draws a curve: at least ~20 points, never sparser than --logging-steps.
    log_every = max(1, min(cfg.logging_steps, plan.total_steps // 20))
    params = [p for p in model.parameters() if p.requires_grad]
    if not sharded:
        ranks.broadcast_params(params)
    step, stopped, eval_loss, peak = start, False, None, 0
    began, call_tokens = time.perf_counter(), 0
    window: list[float] = []
    try:
        while step < plan.total_steps:
            if ranks.flag(hooks.should_stop(), device):
                stopped = True
                break
            lr = scheduler.get_last_lr()[0]
            try:
                step_loss, tokens = _accumulate(
                    model,
                    rows,
                    plan.micro_batches(step, cfg.max_tokens_per_batch, pad_to),
                    pad_id,
                    pad_to,
                    autocast,
                    ranks,
                    sharded,
                )
                if not sharded:  # FSDP has summed them in its reduce-scatter
                    ranks.all_reduce_grads(params)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                optimizer.zero_grad(set_to_none=True)
                raise _oom_error(step + 1, cfg, max(rows.lengths), device) from None
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ranks.many:
                step_loss, summed = ranks.sum(step_loss, tokens, device=device)
                tokens = int(summed)
            call_tokens += tokens
            if not math.isfinite(step_loss):
                raise InvalidInput(f"the training loss became {step_loss} at step {step}: lower --lr")
            state["losses"].append(step_loss)
            window.append(step_loss)
            elapsed = time.perf_counter() - began
            progress = {
                "step": step,
                "total": plan.total_steps,
                "epoch": step / plan.steps_per_epoch,
                "loss": step_loss,
                "lr": lr,
                "tokens_per_s": call_tokens / elapsed if elapsed > 0 else 0.0,
                "eta_s": (plan.total_steps - step) * elapsed / (step - start),
                "tokens_seen": state["tokens_seen"] + call_tokens,
                "elapsed_s": state["train_seconds"] + elapsed,
            }
            last = step == plan.total_steps
            if eval_rows is not None and (ranks.main or sharded) and (step % eval_every == 0 or last):
                eval_loss = evaluate(model, eval_rows, cfg.batch_size, pad_id, autocast, pad_to)
                state["eval_losses"][str(step)] = progress["eval_loss"] = eval_loss
                if writer is not None:
                    writer.add_scalar("eval/loss", eval_loss, step)
            if hooks.score is not None and ranks.main and (step % eval_every == 0 or last):
                peak = max(peak, _peak_memory(device))  # generation resets CUDA's peak counter
                summary = hooks.score(model, step)
                state["eval_metrics"][str(step)] = progress["eval_metric"] = summary
                for key, value in summary.items() if writer is not None else ():
                    writer.add_scalar(f"eval/{key}", value, step)
            if step % log_every == 0 or last:
                _log(writer, progress, window)
                window.clear()
            if ranks.main:
                hooks.on_progress(progress)
            if step % cfg.save_steps == 0 or last:
                whole = full_state(model, optimizer) if sharded else None  # gathered by every rank
                snapshot = {**state, "fingerprint": fingerprint}
                snapshot.update(tokens_seen=progress["tokens_seen"], train_seconds=progress["elapsed_s"])
                if ranks.main:
                    keep = cfg.save_total_limit
                    save_checkpoint(
                        out.checkpoints, step, model, optimizer, scheduler, snapshot, keep=keep, whole=whole
                    )
    finally:
        if writer is not None:
            writer.close()
        restore()

    losses = state["losses"]
    if eval_rows is not None and eval_loss is None and state["eval_losses"]:
        eval_loss = state["eval_losses"][max(state["eval_losses"], key=int)]
    return TrainResult(
        steps=step,
        total_steps=plan.total_steps,
        tokens_seen=state["tokens_seen"] + call_tokens,
        final_loss=losses[-1] if losses else None,
        losses=list(losses),
        train_seconds=state["train_seconds"] + (time.perf_counter() - began),
        peak_memory_bytes=max(peak, _peak_memory(device)),
        stopped=stopped,
        eval_loss=eval_loss,
        skipped_rows=rows.skipped,
        resumed_from=start if checkpoint is not None else None,
        eval_losses={int(k): v for k, v in state["eval_losses"].items()},
        eval_metrics={int(k): v for k, v in state["eval_metrics"].items()},
    )
