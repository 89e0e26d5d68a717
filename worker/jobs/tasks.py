"""The Celery task: one call to `worker.jobs.pool.run_pool_job` (`run_job` on this process's GPU), in
a fresh worker process per job.

The message carries only the job id; the catalog holds the rest. Nothing heavy is imported here
(the handler imports torch when it runs), so the worker's parent process never initialises CUDA.
"""

from __future__ import annotations

import os

from celery import Task, shared_task

from catalog.db import Catalog
from catalog.errors import ServiceUnavailable
from worker.jobs.messages import TASK_NAME
from worker.jobs.pool import WaitForGpus, run_pool_job
from worker.jobs.requests import job_owner
from worker.jobs.runner import REQUEUED

GPU_WAIT_SECONDS = 5
"""A job whose GPUs are busy is offered again after this pause (its message returns to the broker),
growing by as much with each offer up to GPU_WAIT_MAX_SECONDS: every offer starts a job process,
which a long wait should not do every few seconds."""
GPU_WAIT_MAX_SECONDS = 30


@shared_task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    Request="worker.jobs.requests:JobRequest",  # a dead job process gives its job back at once
    ignore_result=True,
    autoretry_for=(ServiceUnavailable,),  # the catalog was unreachable before the job was claimed
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=20,
)
def run_job_task(self: Task, job_id: int) -> str:
    catalog = Catalog(self.app.conf.ft_settings)
    try:
        owner = job_owner(self.request.hostname, os.getpid())
        status = run_pool_job(catalog, self.app.conf.get("ft_pool"), job_id, owner)
    except WaitForGpus:  # its GPUs are busy: the same message again after a pause, as often as needed
        pause = min(GPU_WAIT_SECONDS * (1 + self.request.retries), GPU_WAIT_MAX_SECONDS)
        raise self.retry(countdown=pause, max_retries=None) from None
    finally:
        catalog.dispose()
    if status == REQUEUED:  # the attempt failed, the job is queued again: it needs a new message
        raise self.retry(countdown=1, max_retries=None)
    return status
