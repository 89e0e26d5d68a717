"""A worker in the pool: it registers itself and its GPUs, heartbeats, and gives each job process a GPU.

The parent (`ft worker`) runs `WorkerPresence` around the Celery worker: register in the catalog's
`workers` table, a heartbeat thread every `HEARTBEAT_SECONDS`, marked stopped on exit. The worker's
GPUs travel to the pool's processes on the Celery app (`app.conf.ft_pool`, a `PoolConfig`).

Each pool process runs one job and exits (max_tasks_per_child=1), and its replacement takes the same
pool slot (billiard gives a new process the lowest slot no live process holds). Slot i owns GPU
`gpus[i % len(gpus)]`: `job_gpu` sets `CUDA_VISIBLE_DEVICES` to it before the job imports torch, so two
job processes never share a GPU while the concurrency is at most the number of GPUs (more than that
shares them, as asked), and records which job runs on it in the catalog. A `--gpus N` train job claims
N free GPUs of the worker together (`claim_job_gpus`, a gang: it never holds some while it waits for
the others) and its process sees all N (worker.jobs.launch starts one process per GPU); a one-GPU job
whose slot GPU such a job holds takes another free one. A job whose GPUs are not free is noted as
waiting (`ft jobs list` says why) and its message comes back after a pause (worker.jobs.tasks). On a
worker without GPUs a `--gpus N` job runs N processes on the CPU (gloo). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from catalog.db import Catalog
from catalog.errors import NotFound
from catalog.jobs import note_waiting
from catalog.models import Job
from catalog.workers import (
    HEARTBEAT_SECONDS,
    GpuNeed,
    claim_for,
    claim_gpu,
    free_gpu,
    gang_gpus,
    heartbeat,
    mark_stopped,
    register_worker,
)
from worker.jobs.gpus import Gpu, parse_size
from worker.jobs.runner import run_job

logger = logging.getLogger(__name__)

VISIBLE = "CUDA_VISIBLE_DEVICES"
USER_CAP_ENV = "FT_MAX_GPUS_PER_USER"
"""At most this many GPUs of the pool held at once by one user's jobs (unset: no cap); every worker
should have the same value."""


@dataclass(frozen=True)
class PoolConfig:
    """What a job process needs to know of its worker: its row and its GPUs (CUDA indices)."""

    worker_id: int | None
    gpus: tuple[int, ...] = ()
    hide_gpus: bool = False
    """`--gpus none`: job processes see no GPU (CUDA_VISIBLE_DEVICES empty)."""


def default_concurrency(gpus: Sequence[Gpu]) -> int:
    """One job process per GPU, or one on a machine without GPUs."""
    return max(1, len(gpus))


class WorkerPresence:
    """Registers the worker on enter, heartbeats in a thread, marks it stopped on exit."""

    def __init__(
        self,
        catalog: Catalog,
        name: str,
        host: str,
        queues: Sequence[str],
        gpus: Sequence[Gpu],
        *,
        interval: float = HEARTBEAT_SECONDS,
        measure: Callable[[list[int]], dict[int, dict[str, int]]] | None = None,
    ):
        """`measure(indices)` reads the GPUs' utilisation and memory in use for each heartbeat
        (worker.jobs.gpus.nvml_usage for GPUs NVML found; None for declared ones)."""
        self.catalog, self.name, self.host, self.queues, self.gpus = catalog, name, host, queues, gpus
        self.interval, self.measure = interval, measure
        self.worker_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-worker-{name}", daemon=True)

    def __enter__(self) -> WorkerPresence:
        self._register(None)
        self._thread.start()
        return self

    def _register(self, worker_id: int | None) -> None:
        gpus = [g.to_dict() for g in self.gpus]
        try:
            with self.catalog.session() as s:
                self.worker_id = register_worker(
                    s, self.name, self.host, os.getpid(), self.queues, gpus, worker_id=worker_id
                ).id
        except Exception as error:
            if worker_id is None:
                raise
            logger.warning("worker %s could not register again, will retry: %s", self.name, error)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        if self.worker_id is None:
            return
        try:
            with self.catalog.session() as s:
                mark_stopped(s, self.worker_id)
        except Exception as error:  # the row then goes stale and is shown as gone
            logger.warning("could not mark worker %s stopped: %s", self.name, error)

    def config(self, hide_gpus: bool = False) -> PoolConfig:
        return PoolConfig(self.worker_id, tuple(g.index for g in self.gpus), hide_gpus)

    def _run(self) -> None:
        assert self.worker_id is not None
        while not self._stop.wait(self.interval):
            try:
                usage = self.measure([g.index for g in self.gpus]) if self.measure else None
                with self.catalog.session() as s:
                    heartbeat(s, self.worker_id, usage=usage)
            except NotFound:  # `ft workers prune` took the row while this worker was away
                logger.warning("worker %s was pruned from the pool while away; registering again", self.name)
                self._register(self.worker_id)
            except Exception as error:  # the catalog may come back; until then the worker looks gone
                logger.warning("worker heartbeat failed, will retry: %s", error)


def pool_slot() -> int | None:
    """This pool process's slot (billiard's process index), or None outside a Celery pool."""
    from billiard.process import current_process

    return getattr(current_process(), "index", None)


def slot_gpu(config: PoolConfig | None, slot: int | None) -> int | None:
    """The GPU (CUDA index) that pool slot `slot` owns, or None where the worker has no GPUs."""
    if config is None or not config.gpus:
        return None
    return config.gpus[(slot or 0) % len(config.gpus)]


@contextmanager
def job_gpu(config: PoolConfig | None, slot: int | None = None) -> Iterator[int | None]:
    """Set CUDA_VISIBLE_DEVICES for this job process to its slot's GPU (empty with `--gpus none`,
    untouched on a worker without GPUs); yields the GPU index or None."""
    gpu = slot_gpu(config, slot)
    if gpu is not None:
        os.environ[VISIBLE] = str(gpu)
    elif config is not None and config.hide_gpus:
        os.environ[VISIBLE] = ""
    yield gpu


class GpuRecord:
    """Records, in the worker's row, that a job runs on this process's GPU, and frees it afterwards.

    `start(job_id)` is called once the job's lease is claimed (a job dropped as not claimable never
    shows on a GPU); `stop()` when the job ends. Catalog errors are logged, never raised: the GPU is
    this process's whatever the row says, and the worker's heartbeat repairs the row."""

    def __init__(self, catalog: Catalog, config: PoolConfig | None, gpu: int | None):
        self.catalog, self.config, self.gpu = catalog, config, gpu
        self.job_id: int | None = None

    @property
    def active(self) -> bool:
        return self.gpu is not None and self.config is not None and self.config.worker_id is not None

    def start(self, job_id: int) -> None:
        if not self.active:
            return
        assert self.config is not None and self.config.worker_id is not None
        try:
            with self.catalog.session() as s:
                claim_gpu(s, self.config.worker_id, job_id, self.gpu, take_over=True)
            self.job_id = job_id
        except Exception as error:
            logger.warning("job %d: could not record it on GPU %s: %s", job_id, self.gpu, error)

    def stop(self) -> None:
        if self.job_id is None or self.config is None or self.config.worker_id is None:
            return
        try:
            with self.catalog.session() as s:
                free_gpu(s, self.config.worker_id, self.job_id)
        except Exception as error:
            logger.warning("job %d: could not free GPU %s: %s", self.job_id, self.gpu, error)
        self.job_id = None


class WaitForGpus(Exception):
    """The job needs more free GPUs than this worker has now; its message comes back after a pause."""


def gpus_needed(catalog: Catalog, job_id: int) -> GpuNeed:
    """What the job asks of its GPUs (`need_of` its train spec; one GPU of any kind for other jobs),
    with the per-user cap of this worker's FT_MAX_GPUS_PER_USER."""
    cap = os.environ.get(USER_CAP_ENV, "").strip()
    with catalog.session() as s:
        job = s.get(Job, job_id)
        user = job.submitted_by if job is not None else None
        train = (job.spec or {}).get("train", {}) if job is not None and job.kind == "train" else {}
    return need_of(train, user=user, user_cap=int(cap) if cap.isdigit() else None)


def need_of(train: dict[str, Any], *, user: str | None = None, user_cap: int | None = None) -> GpuNeed:
    """The GpuNeed of a train spec's `train` section: `--gpus`, `--gpu-class`, `--min-gpu-memory`."""
    memory = train.get("min_gpu_memory")
    return GpuNeed(
        count=int(train.get("gpus", 1) or 1),
        gpu_class=train.get("gpu_class"),
        min_memory_bytes=parse_size(memory, "--min-gpu-memory") if memory else None,
        user=user,
        user_cap=user_cap,
    )


def claim_job_gpus(
    catalog: Catalog, config: PoolConfig | None, job_id: int, need: GpuNeed, slot: int | None
) -> str:
    """Claim the GPUs job `job_id` runs on and set CUDA_VISIBLE_DEVICES to them; returns them ("0,1").
    One GPU of any kind, with no cap: this slot's, unless a multi-GPU job holds it (then another free
    one). Otherwise N free GPUs that fit the need, together (a gang), within the user's cap. Raises
    WaitForGpus (having noted why on the job) when they cannot be had now."""
    mine = slot_gpu(config, slot)
    assert config is not None and config.worker_id is not None and mine is not None
    got: list[int] | str
    with catalog.session() as s:
        plain = need.count == 1 and not need.picky and need.user_cap is None
        if plain and mine not in gang_gpus(s, config.worker_id):
            got = [mine]  # recorded with take_over once the lease is held (GpuRecord)
        else:
            got = claim_for(s, config.worker_id, job_id, need, prefer=mine)
    if isinstance(got, str):
        note_waiting(catalog, job_id, got)
        raise WaitForGpus(got)
    os.environ[VISIBLE] = ",".join(str(g) for g in got)
    return os.environ[VISIBLE]


def run_pool_job(catalog: Catalog, config: PoolConfig | None, job_id: int, owner: str) -> str:
    """`run_job` in this pool process, on its GPUs, recorded in the worker's row while it runs. A job
    whose GPUs are taken raises WaitForGpus (worker.jobs.tasks sends it again after a pause)."""
    slot = pool_slot()
    need = gpus_needed(catalog, job_id)
    with job_gpu(config, slot) as gpu:
        record = GpuRecord(catalog, config, gpu)
        if record.active:
            claim_job_gpus(catalog, config, job_id, need, slot)
            if os.environ[VISIBLE] != str(gpu):  # several GPUs, or another free one: claimed already
                record.gpu = None
                record.job_id = job_id
        elif need.picky:  # a job that asks for a kind of GPU never runs on a CPU
            why = f"needs {need.describe()}; worker {owner.partition(':')[0]} has no GPUs"
            note_waiting(catalog, job_id, why)
            raise WaitForGpus(why)
        try:
            return run_job(catalog, job_id, owner, on_claimed=record.start)
        finally:
            record.stop()
