"""Data parallelism for the training loop: each rank takes its share of every step's micro-batches.

torchrun starts one process per GPU (`worker.jobs.launch` for a `--gpus N` job) and sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous; `Ranks.from_env()` joins the process group (NCCL on GPUs,
gloo on a CPU). The engine then does, every optimizer step:

1. the step's micro-batches are planned as on one GPU (same rows, same token-budget grouping);
2. rank r runs forward and backward on micro-batches r, r + N, r + 2N, ..., each loss weighted by its
   share of the whole step's target tokens (as on one GPU);
3. `all_reduce_grads` sums the trainable parameters' gradients over the ranks: the sum is the one-GPU
   gradient of the step, so the update, the clipping and the loss curve are the one-GPU ones, whatever
   the number of GPUs (a job may resume from a checkpoint on another number of GPUs).

Why not `DistributedDataParallel`: DDP averages gradients and needs every rank to run the same number
of backward passes, while token-budgeted micro-batches leave ranks with different counts (one rank may
get none in a short step); summing the gradients once per step after accumulation gives the exact
one-GPU gradient for any split. Adapter methods train few parameters, so one flattened all-reduce a
step costs little next to the forward passes. Rank 0 alone writes checkpoints, TensorBoard and progress,
and saves the artifact; every rank reads the same checkpoint on resume.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's processes; `Ranks()` is the one-process run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes (checkpoints, TensorBoard, progress, the artifact)."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    @classmethod
    def current(cls) -> Ranks:
        """The process group this process already joined, or the one-process run."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def from_env(cls, timeout_s: float = 1800) -> Ranks:
        """Join the process group torchrun describes in the environment (NCCL on a GPU, else gloo)."""
        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo", timeout=dt.timedelta(seconds=timeout_s))
        return cls.current()

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: r, r + N, r + 2N, ... (all of them on one process)."""
        return list(items[self.rank :: self.world])

    def all_reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Sum the gradients of `params` over the ranks, in one flattened all-reduce (a rank that ran no
        micro-batch this step contributes zeros)."""
        if not self.many or not params:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def sum(self, *values: float, device: torch.device) -> list[float]:
        """Each value summed over the ranks (the step's loss and tokens)."""
        if not self.many:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def max(self, value: int, device: torch.device) -> int:
        if not self.many:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast_params(self, params: Sequence[nn.Parameter]) -> None:
        """Start every rank from rank 0's trainable weights (initialisation may differ per process)."""
        if not self.many:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def flag(self, value: bool, device: torch.device) -> bool:
        """True on every rank when it is True on any (a stop request seen by rank 0)."""
        if not self.many:
            return value
        return self.max(int(value), device) > 0

    def barrier(self) -> None:
        if self.many:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.many and dist.is_initialized():
            dist.destroy_process_group()
