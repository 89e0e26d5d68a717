"""A `--gpus N` train job: one process per GPU, started with torchrun, watched by the job process.

The job process (it holds the lease; the pool gave it N GPUs through CUDA_VISIBLE_DEVICES) converts
the data once, then runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m worker.jobs.rank JOB STAGED RUN

and waits. Each rank rebuilds the job's context from the catalog (the settings come through the
environment), trains its share of every step (worker/train/distributed.py) and resumes from the job's
checkpoints like a one-GPU job. Rank 0 writes the progress to `RUN/progress.json` (the job process
copies it to the job row every second), its log lines to the job's log, the artifact into STAGED (the
job process commits and registers it) and `RUN/result.json`.

A cancel request stops the ranks (SIGTERM to their process group, then SIGKILL). A rank that dies
(killed, out of memory) makes torchrun stop the others and exit non-zero: the attempt fails with what
torchrun reported, and the job is queued again to resume from its last complete checkpoint (attempts
permitting). Why torchrun and not a hand-made spawn: it is what every cluster launcher runs, it picks a
free rendezvous port per job (`--standalone`), sets RANK/LOCAL_RANK/WORLD_SIZE, and tears the group
down when one rank fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.errors import FtError
from worker.jobs.handlers import JobCancelled, JobContext
from worker.jobs.logs import log_path

if TYPE_CHECKING:
    from worker.models.loading import ParamCounts
    from worker.train.engine import TrainResult

POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 15.0
"""After SIGTERM, how long the ranks get to exit before SIGKILL."""


class RanksFailed(FtError):
    """A rank of a multi-GPU job failed: the attempt is over, another attempt resumes the job."""

    retry = True


def torchrun_command(gpus: int, job_id: int, staged: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", str(gpus), "-m", "worker.jobs.rank", str(job_id), str(staged), str(run_dir),
    ]  # fmt: skip


def train_on_ranks(ctx: JobContext, gpus: int, staged: Path) -> tuple[TrainResult, ParamCounts]:
    """Train the job on `gpus` processes; returns rank 0's result once it saved the artifact in `staged`."""
    run_dir = ctx.workdir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("progress.json", "result.json"):
        (run_dir / name).unlink(missing_ok=True)
    env = {**os.environ, **ctx.settings.to_env(), "PYTHONUNBUFFERED": "1"}
    cmd = torchrun_command(gpus, ctx.job.id, staged, run_dir)
    ctx.log.info("starting %d training processes: %s", gpus, " ".join(cmd[1:]))
    log_file = log_path(ctx.job, ctx.settings)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _watch(ctx, proc, run_dir / "progress.json")
        except BaseException:
            _stop(proc)
            raise
    if proc.returncode != 0:
        raise RanksFailed(
            f"a training process of the {gpus}-GPU job failed ({_why(log_file, proc.returncode)})"
        )
    return _read_result(run_dir / "result.json")


def _watch(ctx: JobContext, proc: subprocess.Popen[bytes], progress_file: Path) -> None:
    seen = 0.0
    while proc.poll() is None:
        if ctx.cancelled():
            ctx.log.info("stopping the training processes")
            _stop(proc)
            raise JobCancelled(f"job {ctx.job.id} cancelled")
        seen = _copy_progress(ctx, progress_file, seen)
        time.sleep(POLL_SECONDS)
    _copy_progress(ctx, progress_file, seen)


def _copy_progress(ctx: JobContext, path: Path, seen: float) -> float:
    try:
        mtime = path.stat().st_mtime
        if mtime != seen:
            ctx.report(json.loads(path.read_text(encoding="utf-8")))
        return mtime
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-rename
        return seen


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")


def _why(log_file: Path, returncode: int) -> str:
    """What torchrun said of the first failed rank (`exitcode: -9` is signal 9), from the log's tail."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 20000))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        tail = ""
    rank = re.search(r"rank\s*:\s*(\d+)", tail)
    found = _EXIT.search(tail)
    where = f"rank {rank.group(1)}" if rank else "a rank"
    if found and int(found.group(1)) < 0:
        sig = -int(found.group(1))
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return f"{where} was killed by signal {sig} ({name})"
    if found:
        return f"{where} exited with code {found.group(1)}; see `ft jobs logs`"
    return f"torchrun exited with code {returncode}; see `ft jobs logs`"


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _read_result(path: Path) -> tuple[TrainResult, ParamCounts]:
    from worker.models.loading import ParamCounts
    from worker.train.engine import TrainResult

    if not path.is_file():
        raise RanksFailed("the training processes exited without a result; see `ft jobs logs`")
    data = json.loads(path.read_text(encoding="utf-8"))
    result = data["result"]
    result["eval_losses"] = {int(k): v for k, v in result.get("eval_losses", {}).items()}
    result["eval_metrics"] = {int(k): v for k, v in result.get("eval_metrics", {}).items()}
    return TrainResult(**result), ParamCounts(**data["counts"])
