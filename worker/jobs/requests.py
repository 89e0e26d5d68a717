"""What the worker's parent does when a job's process dies under it (SIGKILL, the OOM killer).

Celery's parent process sees the pool child exit (a `WorkerLostError`) and, with
`reject_on_worker_lost`, hands the message back to the broker at once. But the dead child still holds
the job's lease in the catalog, so the re-delivery would be dropped and the job would wait for the
lease to run out. `JobRequest` first gives the job back (`catalog.jobs.requeue_killed`, guarded by the
dead child's owner name, the attempt counted): the re-delivered message then claims it and the job
resumes from its last complete checkpoint; a job killed on every attempt fails naming the signal.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from catalog.db import Catalog
from catalog.jobs import requeue_killed

logger = logging.getLogger(__name__)

_STATUS = re.compile(r"(signal \d+(?: \(\w+\))?|exitcode -?\d+)")


def how_it_died(exc: BaseException) -> str:
    """ "killed by signal 9 (SIGKILL)" or "exited with exitcode 1", from billiard's message."""
    found = _STATUS.search(str(exc))
    if found is None:
        return "lost (it exited unexpectedly)"
    status = found.group(1)
    return f"killed by {status}" if status.startswith("signal") else f"exited with {status}"


def job_owner(hostname: str, pid: int) -> str:
    """The lease owner a job process writes (see worker.jobs.tasks): the worker's name and its pid."""
    return f"{hostname}:{pid}"


class JobRequest(Request):
    """A Celery request that gives a job back the moment its process dies."""

    def on_failure(
        self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        if isinstance(exc, WorkerLostError) and self.worker_pid and self.args:
            self._give_back(int(self.args[0]), how_it_died(exc))
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _give_back(self, job_id: int, how: str) -> None:
        catalog = Catalog(self.task.app.conf.ft_settings)
        try:
            job = requeue_killed(catalog, job_id, job_owner(self.hostname, self.worker_pid), how)
        except Exception as exc:  # the catalog is down: the lease runs out and the reconciler acts
            logger.error("job %d: its process was %s; could not re-queue it now: %s", job_id, how, exc)
            return
        finally:
            catalog.dispose()
        if job is not None:
            logger.warning("job %d: its process was %s; %s", job_id, how, job.status)
