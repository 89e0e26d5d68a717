"""Atomic training checkpoints: write, find the last complete one, restore, keep the last few.

A checkpoint is a directory `step-000000123/` under the run's checkpoint root holding
- `trainable.safetensors`: the trainable parameters only (adapter / prompt / unfrozen blocks / all),
- `optimizer.pt`, `scheduler.pt`: their state dicts,
- `rng.safetensors` + `rng.json`: torch's and CUDA's generator states (tensors), python's and numpy's
  (numbers): nothing in a checkpoint is unpickled on resume (a crafted file must not run code),
- `state.json`: the trainer's position (step, tokens seen, losses so far, run fingerprint),
- `COMPLETE`: written last, listing the files and their sizes.
Everything is written into a hidden temporary directory, fsync'd, and renamed into place; a directory
without a valid `COMPLETE` marker (a crash, a copy in progress) is never resumed from and is removed
when the next checkpoint is written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from catalog.errors import InvalidInput
from catalog.store import fsync_path
from worker.train.sharding import OPTIMIZER_FORMAT, is_sharded, load_full_state

MARKER = "COMPLETE"
WEIGHTS = "trainable.safetensors"
RNG_TENSORS, RNG_NUMBERS = "rng.safetensors", "rng.json"
FILES = (WEIGHTS, "optimizer.pt", "scheduler.pt", RNG_TENSORS, RNG_NUMBERS, "state.json")
_NAME = re.compile(r"^step-(\d{9})$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint after optimizer step `step`."""
    return f"step-{step:09d}"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on the CPU."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_rng_state(directory: Path) -> None:
    """Every random generator the training loop uses (dropout, sampling): torch's and each CUDA
    device's as tensors (safetensors), python's and numpy's as numbers (JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())}
    save_file(tensors, directory / RNG_TENSORS)
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numbers = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    (directory / RNG_NUMBERS).write_text(json.dumps(numbers))


def load_rng_state(directory: Path) -> None:
    """Restore what `save_rng_state` wrote; reads only tensors and JSON numbers."""
    tensors = load_file(directory / RNG_TENSORS)
    numbers = json.loads((directory / RNG_NUMBERS).read_text())
    try:
        version, internal, gauss = numbers["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        kind, keys, pos, has_gauss, cached = numbers["numpy"]
        np.random.set_state(
            (str(kind), np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"checkpoint {directory}: {RNG_NUMBERS} is damaged ({exc}); delete it to start over"
        ) from exc
    torch.set_rng_state(tensors["torch"])
    cuda = [
        tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def is_complete(path: Path) -> bool:
    """True if `path` is a checkpoint whose marker lists files that are all present at their size."""
    marker = path / MARKER
    if not _NAME.match(path.name) or not marker.is_file():
        return False
    try:
        sizes = json.loads(marker.read_text())["files"]
        return all(
            (path / name).is_file() and (path / name).stat().st_size == size for name, size in sizes.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints under `root` as (step, path), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    *,
    keep: int,
    whole: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically, then keep only the last `keep` complete ones. `whole`
    is a sharded model's gathered (weights, optimizer state by name) (worker/train/sharding.py)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if whole is not None:
        save_file(whole[0], tmp / WEIGHTS)
        torch.save(whole[1], tmp / "optimizer.pt")
        state = {**state, "optimizer_format": OPTIMIZER_FORMAT}
    else:  # positional: a state resumed from a sharded run's checkpoint must not keep that label
        state = {k: v for k, v in state.items() if k != "optimizer_format"}
        save_file(trainable_state(model), tmp / WEIGHTS)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    save_rng_state(tmp)
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
    for name in FILES:
        fsync_path(tmp / name)
    sizes = {name: (tmp / name).stat().st_size for name in FILES}
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": sizes}))
    fsync_path(tmp / MARKER)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(root)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the last `keep` complete checkpoints, and leftovers of interrupted writes."""
    complete = list_checkpoints(root)
    for _, path in complete[:-keep] if keep else complete:
        shutil.rmtree(path, ignore_errors=True)
    kept = {path for _, path in complete[-keep:]} if keep else set()
    for path in root.iterdir():
        stale_tmp = path.name.startswith(".tmp-step-") and not path.name.endswith(f"-{os.getpid()}")
        if path.is_dir() and (stale_tmp or (_NAME.match(path.name) and path not in kept)):
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    """The trainer's position saved in checkpoint `path` (state.json), without loading anything else."""
    return json.loads((path / "state.json").read_text())


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore trainable weights, optimizer, scheduler and RNG from `path`; returns its state.json.
    A checkpoint of a sharded run (its optimizer state keyed by name) loads into a sharded or a plain
    model; one of a plain run only into a plain model."""
    by_name = read_state(path).get("optimizer_format") == OPTIMIZER_FORMAT
    sharded = is_sharded(model)
    if sharded and not by_name:
        raise InvalidInput(
            f"checkpoint {path} was written by an unsharded run: resume it with --no-fsdp, or delete "
            "the checkpoints to start over"
        )
    weights = load_file(path / WEIGHTS)
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    reshaped = sorted(n for n in set(weights) & expected if weights[n].shape != params[n].shape)
    if set(weights) != expected or reshaped:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise InvalidInput(
            f"checkpoint {path} does not match this model's trainable parameters (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, other shape {reshaped[:3]}): were the method or its flags changed? "
            "Delete the checkpoints to start over."
        )
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    if by_name:
        load_full_state(model, optimizer, weights, optim)
    else:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        optimizer.load_state_dict(optim)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    # Our own file, holding python/numpy generator states that weights_only cannot represent.
    load_rng_state(path)
    return read_state(path)
