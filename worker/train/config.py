"""The hyper-parameters every training method shares (`TrainConfig`), validated on construction.

A job spec stores `dataclasses.asdict(cfg)`; `TrainConfig.from_dict` rebuilds it (unknown keys are
refused). `lr`, `epochs` and `optimizer` may be left None: the method supplies its defaults
(`cfg.with_method_defaults(get_method(name))`), e.g. lr 2e-3 and 4 epochs for lora, 1e-4 and 8 epochs for
freeze, paged 8-bit AdamW for qlora. Every error names the CLI flag that fixes it.

The defaults (an effective batch of 32 = 8 x 4 accumulation, 2048 tokens, and each method's lr, epochs
and flags) are the settings that did best in the tuning sweep of issue #4: SmolLM2-135M-Instruct on the
fault-triple data, one H100 (bench/results/quality-faults-*.json, README "Quality"). Larger models
usually want a lower --lr (LoRA on 7B: about 2e-4).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from catalog.errors import InvalidInput

SCHEDULERS = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
MAX_GPUS = 16
"""A job's GPUs come from one host (torchrun --standalone)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int | None = None
    """Passes over the training split (--epochs); None takes the method's default."""
    max_steps: int | None = None
    """Stop after this many optimizer steps even if epochs remain (--max-steps)."""
    lr: float | None = None
    """Peak learning rate (--lr); None takes the method's default."""
    batch_size: int = 8
    """Rows per micro-batch, when --max-tokens-per-batch is 0 (--batch-size)."""
    grad_accum: int = 4
    """Micro-batches per optimizer step (--grad-accum): each step trains on batch_size x grad_accum rows
    (the effective batch), however they are grouped into micro-batches."""
    max_tokens_per_batch: int = 16384
    """Group each optimizer step's rows into micro-batches of at most this many tokens (rows x padded
    length), longest first, instead of batch_size rows each: the same rows and the same update in fewer,
    fuller forward passes (--max-tokens-per-batch; 0: batch_size rows a micro-batch). 16384 holds 8 rows
    of 2048 tokens, the memory of the old default, and a whole step of the fault reports' short rows."""
    seed: int = 42
    """Seed of adapter initialisation, data order and dropout (--seed)."""
    max_samples: int | None = None
    """Train on N rows of the train split, drawn with --seed (--max-samples): try a recipe on a slice
    before the whole run; None: every row."""
    save_steps: int = 200
    """Write a checkpoint every N optimizer steps, and at the end (--save-steps)."""
    save_total_limit: int = 2
    """Keep only the last N checkpoints (--save-total-limit)."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming the learning rate up linearly (--warmup-ratio)."""
    warmup_steps: int | None = None
    """Warm-up length in steps; overrides --warmup-ratio when given (--warmup-steps)."""
    scheduler: str = "cosine"
    """Learning-rate decay after warm-up: cosine, linear or constant (--scheduler)."""
    weight_decay: float = 0.0
    """AdamW weight decay, not applied to biases and norms (--weight-decay)."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (--max-grad-norm); 0 disables clipping."""
    fused_kernels: bool = True
    """Liger's fused Triton kernels on a CUDA GPU (RMSNorm, RoPE, SwiGLU, a cross-entropy that never
    materialises the logits): less memory and time (--no-fused-kernels: transformers' own; needs
    liger-kernel, `pip install ft[gpu]`; no effect on a CPU)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass: far less memory, ~30% slower (--gradient-checkpointing).
    Unset: on a GPU, on only when the memory estimate says the job does not fit without it."""
    optimizer: str | None = None
    """adamw, adamw_8bit or paged_adamw_8bit (--optimizer; 8-bit: bitsandbytes); None: the method's."""
    eval_split: str | None = None
    """Dataset split whose loss is measured every --eval-steps and at the end (--eval-split); None: none."""
    eval_steps: int | None = None
    """Evaluate every N optimizer steps (--eval-steps); None: at --save-steps."""
    eval_metric: str | None = None
    """Also generate on --eval-rows rows of --eval-split at every evaluation and score them with this
    metric (--eval-metric, e.g. triple-f1): the curve is recorded per step, and the best step's weights
    are kept in the adapter (`ft adapters export NAME DEST --checkpoint best`)."""
    eval_rows: int = 50
    """Rows of --eval-split the --eval-metric generates on (a seeded sample; all when fewer)."""
    logging_steps: int = 10
    """Write TensorBoard scalars and a log line every N optimizer steps (--logging-steps); a run shorter
    than 20 x N steps writes every 1/20 of it, so that a short run still draws a curve."""
    gpus: int = 1
    """GPUs of one worker host the job trains on (--gpus): more than 1 starts one process per GPU with
    torchrun, each taking its share of every step's micro-batches; the update is the one-GPU update (the
    same effective batch), so a job may resume on another number of GPUs."""

    fsdp: bool = True
    """With --method full and --gpus above 1: shard the weights, gradients and optimizer state over the
    GPUs (PyTorch FSDP), so a model too big for one GPU trains (--no-fsdp: a whole copy on each GPU)."""

    gpu_class: str | None = None
    """Run only on GPUs of this class, as `ft workers list` shows it, e.g. h100-80gb (--gpu-class)."""
    min_gpu_memory: str | None = None
    """Run only on GPUs with at least this much memory, e.g. 40GiB (--min-gpu-memory)."""

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _whole(self.epochs, "--epochs", minimum=1)
        if self.max_steps is not None:
            _whole(self.max_steps, "--max-steps", minimum=1)
        if self.gpu_class is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", str(self.gpu_class)):
            raise InvalidInput(
                f"--gpu-class {self.gpu_class!r}: write a class as `ft workers list` shows it, e.g. h100-80gb"
            )
        if self.min_gpu_memory is not None:
            from worker.jobs.gpus import GpuSpecError, parse_size

            try:
                parse_size(self.min_gpu_memory, "--min-gpu-memory")
            except GpuSpecError as exc:
                raise InvalidInput(str(exc)) from None
        if self.max_samples is not None:
            _whole(self.max_samples, "--max-samples", minimum=1)
        if self.lr is not None and not (isinstance(self.lr, int | float) and 0 < self.lr < 1):
            raise InvalidInput(f"--lr must be a number in (0, 1) (got {self.lr!r})")
        _whole(self.batch_size, "--batch-size", minimum=1)
        _whole(self.grad_accum, "--grad-accum", minimum=1)
        _whole(self.max_tokens_per_batch, "--max-tokens-per-batch", minimum=0)
        _whole(self.seed, "--seed", minimum=0)
        _whole(self.save_steps, "--save-steps", minimum=1)
        _whole(self.save_total_limit, "--save-total-limit", minimum=1)
        if not 0 <= self.warmup_ratio < 1:
            raise InvalidInput(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.warmup_steps is not None:
            _whole(self.warmup_steps, "--warmup-steps", minimum=0)
        if self.scheduler not in SCHEDULERS:
            raise InvalidInput(f"--scheduler must be one of {', '.join(SCHEDULERS)} (got {self.scheduler!r})")
        if self.weight_decay < 0:
            raise InvalidInput(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.max_grad_norm < 0:
            raise InvalidInput(
                f"--max-grad-norm must be >= 0 (got {self.max_grad_norm}; 0 disables clipping)"
            )
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise InvalidInput(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})")
        if self.eval_steps is not None:
            _whole(self.eval_steps, "--eval-steps", minimum=1)
        _whole(self.eval_rows, "--eval-rows", minimum=1)
        if self.eval_metric is not None:
            from worker.evaluation.metrics import get_metric

            if self.eval_split is None:
                raise InvalidInput("--eval-metric scores generations on a split: give --eval-split too")
            try:
                get_metric(self.eval_metric)
            except InvalidInput as exc:
                raise InvalidInput(f"--eval-metric: {exc}") from None
        _whole(self.logging_steps, "--logging-steps", minimum=1)
        _whole(self.gpus, "--gpus", minimum=1)
        if self.gpus > MAX_GPUS:
            raise InvalidInput(f"--gpus must be at most {MAX_GPUS}, the GPUs of one host (got {self.gpus})")

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step."""
        return self.batch_size * self.grad_accum

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps`."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(self.warmup_ratio * total_steps)

    def with_method_defaults(self, method: Any) -> TrainConfig:
        """A copy with `lr`, `epochs` and `optimizer` filled from the method (a worker.methods.Method)
        when unset."""
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else method.default_lr,
            epochs=self.epochs if self.epochs is not None else method.default_epochs,
            optimizer=self.optimizer if self.optimizer is not None else method.optimizer,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored in the job spec."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict()` output; unknown keys are refused with the accepted flags."""
        from worker.methods import config_from_dict

        return config_from_dict(cls, data, what="training")


def _whole(value: Any, flag: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{flag} must be a whole number (got {value!r})")
    if value < minimum:
        raise InvalidInput(f"{flag} must be >= {minimum} (got {value})")
