"""Run one job: claim its lease, keep it alive, call the kind's handler, finish in one transaction.

`run_job(catalog, job_id, owner)` is what the Celery task calls (and what tests call directly):

1. claim the lease (`catalog.jobs.claim_job`); if another worker holds it, or the job is finished
   or cancelled, there is nothing to do: the message is dropped;
2. open the job's log file and start a heartbeat thread, which renews the lease every
   `lease_seconds / 3`, writes the handler's latest progress, and notices cancellation or a lost
   lease (the handler sees both through `ctx.cancelled()`);
3. call the handler (see `worker.jobs.handlers` for the contract); it returns a `Finish`;
4. run the `Finish` and mark the job `succeeded` in the same transaction, guarded by the lease.

A user error (`FtError`) fails the job with its message; any other exception fails it with a
one-line summary and the traceback in the job's log; `JobCancelled` after a cancel request marks it
`cancelled`. A worker that lost its lease writes nothing: the job belongs to someone else now. An
`FtError` marked `retry` (a rank of a multi-GPU job died) queues the job again, the attempt counted.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from catalog.db import Catalog
from catalog.errors import FtError
from catalog.jobs import LeaseLost, claim_job, finish_job, heartbeat, requeue_attempt
from catalog.store import ArtifactStore
from worker.jobs.handlers import HANDLERS, Finish, HandlerRegistry, JobCancelled, JobContext, job_workdir
from worker.jobs.logs import job_logger, log_path

logger = logging.getLogger(__name__)

PROGRESS_SECONDS = 2.0
"""Progress reported by a handler reaches the job row at most this long after (followers poll it)."""

SKIPPED = "skipped"
"""run_job's answer when the job was not claimable (held elsewhere, finished or cancelled)."""
LOST = "lost"
"""run_job's answer when this worker lost the lease mid-run; the job's state is not its to write."""
REQUEUED = "requeued"
"""run_job's answer when the attempt failed in a way a next attempt may not (an FtError whose `retry` is
True, e.g. a killed rank of a multi-GPU job): the job is `queued` again and needs a new message."""


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """A thread that renews a job's lease and writes its progress until stopped."""

    def __init__(
        self,
        catalog: Catalog,
        job_id: int,
        owner: str,
        lease_seconds: int,
        log: logging.Logger,
        progress: dict[str, Any] | None = None,
    ):
        self.catalog, self.job_id, self.owner, self.lease_seconds = catalog, job_id, owner, lease_seconds
        self.log = log
        self.renew_every = max(lease_seconds / 3, 0.05)
        self.tick = min(self.renew_every, PROGRESS_SECONDS)
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = dict(progress or {})
        self._dirty = False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{job_id}", daemon=True)

    @property
    def progress(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._progress)

    def report(self, progress: dict[str, Any]) -> None:
        with self._lock:
            self._progress, self._dirty = progress, True

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            with self._lock:
                dirty, progress = self._dirty, self._progress
            if not dirty and time.monotonic() - last < self.renew_every:
                continue
            try:
                cancel = heartbeat(
                    self.catalog, self.job_id, self.owner, self.lease_seconds, progress if dirty else None
                )
            except LeaseLost:
                self.log.error(
                    "lost the lease on job %d (another worker took it over); stopping", self.job_id
                )
                self.lease_lost.set()
                return
            except Exception as exc:  # the catalog may come back before the lease runs out
                self.log.warning("heartbeat failed, will retry: %s", exc)
                continue
            last = time.monotonic()
            with self._lock:
                if self._progress is progress:
                    self._dirty = False
            if cancel and not self.cancel_requested.is_set():
                self.log.info("cancellation requested; asking the handler to stop")
                self.cancel_requested.set()


def run_job(
    catalog: Catalog,
    job_id: int,
    owner: str,
    *,
    store: ArtifactStore | None = None,
    handlers: HandlerRegistry = HANDLERS,
    on_claimed: Callable[[int], None] | None = None,
) -> str:
    """Run job `job_id` as `owner` to its end; returns the final status (`succeeded`, `failed`,
    `cancelled`), or `skipped` if it was not claimable, or `lost` if the lease was lost mid-run.
    `on_claimed(job_id)` runs once the lease is held, before the handler (the pool records the job's
    GPU there)."""
    settings = catalog.settings
    job = claim_job(catalog, job_id, owner, settings.lease_seconds)
    if job is None:
        logger.info("job %d is not claimable (running elsewhere, finished or cancelled); dropped", job_id)
        return SKIPPED
    if on_claimed is not None:
        on_claimed(job.id)
    store = store or ArtifactStore(settings.artifacts)
    with job_logger(job, settings) as log:
        log.info("job %d (%s) attempt %d/%d on %s", job.id, job.kind, job.attempts, job.max_attempts, owner)
        if gpus := os.environ.get("CUDA_VISIBLE_DEVICES"):  # set per job process by worker.jobs.pool
            log.info("job %d on GPU %s (CUDA_VISIBLE_DEVICES=%s)", job.id, gpus, gpus)
        with Heartbeat(catalog, job.id, owner, settings.lease_seconds, log, job.progress) as beat:
            ctx = JobContext(catalog, store, settings, job, log, beat.report, beat.should_stop)
            finish, status, error = _call_handler(handlers, ctx)
        progress = beat.progress
        if beat.lease_lost.is_set():
            return LOST
        if status == REQUEUED:
            again = requeue_attempt(catalog, job.id, owner, error or "the attempt failed")
            final = again.status if again is not None else LOST
            log.info("job %d %s: %s", job.id, "re-queued" if final == "queued" else final, error)
            return REQUEUED if final == "queued" else final
        if status == "cancelled" and not beat.cancel_requested.is_set():
            # The handler stopped without a cancel request or lost lease: treat it as a bug.
            status, error = "failed", "the handler stopped as if cancelled, but nobody cancelled the job"
        try:
            if finish is not None:
                status, error = _succeed(
                    catalog, job.id, owner, finish, progress, log, log_path(job, settings)
                )
            if status != "succeeded":
                with catalog.session() as s:
                    finish_job(s, job.id, owner, status, error=error, progress=progress)
        except LeaseLost:
            log.error("lost the lease on job %d before finishing; its result is discarded", job.id)
            return LOST
        log.info("job %d %s%s", job.id, status, f": {error}" if error else "")
        if status in ("succeeded", "cancelled"):  # a failed job keeps its checkpoints for `ft jobs retry`
            shutil.rmtree(job_workdir(store, job.id), ignore_errors=True)
        return status


def _call_handler(handlers: HandlerRegistry, ctx: JobContext) -> tuple[Finish | None, str, str | None]:
    """(finish, "succeeded", None) or (None, final status, error)."""
    try:
        finish = handlers.get(ctx.job.kind)(ctx)
        if not callable(finish):
            raise TypeError(f"the {ctx.job.kind} handler returned {type(finish).__name__}, not a Finish")
        return finish, "succeeded", None
    except JobCancelled:
        return None, "cancelled", "cancelled on request"
    except FtError as exc:
        ctx.log.error("%s", exc)
        return None, REQUEUED if getattr(exc, "retry", False) else "failed", str(exc)
    except Exception as exc:
        return None, "failed", _bug(ctx.log, exc, log_path(ctx.job, ctx.settings))


def _succeed(
    catalog: Catalog,
    job_id: int,
    owner: str,
    finish: Finish,
    progress: dict[str, Any],
    log: logging.Logger,
    where: Path,
) -> tuple[str, str | None]:
    """Register the handler's output and mark the job succeeded, in one transaction."""
    try:
        with catalog.session() as s:
            result = finish(s)
            finish_job(s, job_id, owner, "succeeded", result=result, progress=progress)
        log.info("result: %s", result)
        return "succeeded", None
    except LeaseLost:
        raise
    except FtError as exc:
        log.error("%s", exc)
        return "failed", str(exc)
    except Exception as exc:
        return "failed", _bug(log, exc, where)


def _bug(log: logging.Logger, exc: Exception, where: object) -> str:
    log.error("unexpected error:\n%s", "".join(traceback.format_exception(exc)).rstrip())
    first = (str(exc).strip().splitlines() or [""])[0]
    summary = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"{summary} (unexpected; traceback in {where})"
