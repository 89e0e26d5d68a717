"""The reconciler: re-sends jobs whose worker died or whose message was lost, so that they run.

A job stays `running` with a lease that its worker renews. If the worker dies (SIGKILL, a lost
machine), the lease runs out; `catalog.jobs.requeue_expired` puts such jobs back to `queued` (or
fails them after `max_attempts`), and the reconciler sends each one's message again. A job can also
sit `queued` with no message anywhere (Redis restarted without persistence, a worker killed between
taking the message and claiming the job): one queued longer than `FT_RESEND_GRACE_SECONDS` whose id
is in no message of the broker (`worker.jobs.inflight`) is sent again. It runs in every worker's
main process at start-up and then once per lease period (a worker bootstep), so it works the same on
every broker. A re-sent job that meanwhile runs elsewhere, or a second copy, is dropped by the claim:
re-sending never runs a job twice. On an SQL broker each pass also deletes the messages already
handed out (`worker.jobs.messages.purge_consumed`), which kombu would otherwise keep forever.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from catalog.db import Catalog
from catalog.errors import ServiceUnavailable
from catalog.jobs import mark_resent, queued_since, requeue_expired
from catalog.settings import Settings
from worker.jobs.inflight import jobs_in_flight
from worker.jobs.messages import purge_consumed, send_job

logger = logging.getLogger(__name__)
STOP_GRACE_S = 5.0
"""How long a stopping worker waits for a reconcile pass in progress."""


class Reconciler:
    """Requeue and re-send expired and lost jobs now and every `period` seconds, in a daemon thread."""

    def __init__(self, app: Celery, settings: Settings, period: float | None = None):
        self.app, self.settings = app, settings
        self.period = float(period if period is not None else settings.lease_seconds)
        self._unsent: dict[int, tuple[str, int]] = {}  # job id -> (queue, priority), to try again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ft-reconciler", daemon=True)

    def run_once(self) -> list[int]:
        """One pass; returns the ids of the jobs re-sent."""
        grace = self.settings.resend_grace_seconds
        # The broker first: a message taken by a worker after this look is counted as in flight.
        in_flight = jobs_in_flight(self.settings.broker_url, recent=grace)
        catalog = Catalog(self.settings)  # a short-lived engine: no connection outlives the pass
        try:
            for job in requeue_expired(catalog):
                logger.warning("job %d: its worker stopped renewing the lease; re-queued", job.id)
                self._unsent[job.id] = (job.queue, job.priority)
            lost = [] if in_flight is None else queued_since(catalog, grace)
            for job in lost:
                if job.id not in in_flight and job.id not in self._unsent:
                    logger.warning(
                        "job %d: queued for %ds with no message in the broker; re-sent", job.id, grace
                    )
                    self._unsent[job.id] = (job.queue, job.priority)
            sent = []
            for job_id, (queue, priority) in list(self._unsent.items()):
                try:
                    send_job(self.app, job_id, queue=queue, priority=priority)
                except ServiceUnavailable as exc:
                    logger.error("job %d: %s; will try again", job_id, exc)
                    continue
                del self._unsent[job_id]
                mark_resent(catalog, job_id)
                sent.append(job_id)
        finally:
            catalog.dispose()
        self._purge()
        return sent

    def _purge(self) -> None:
        try:
            if purged := purge_consumed(self.settings.broker_url):
                logger.info("deleted %d consumed messages from the broker", purged)
        except Exception as exc:  # busy or down: the next pass deletes them
            logger.warning("could not delete consumed messages: %s", (str(exc).splitlines() or [""])[0])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and give a pass in progress STOP_GRACE_S to finish. A pass blocked
        longer (an SQLite lock waits up to 30 s) is left to die with the process: each of its steps is a
        transaction or an idempotent send, and the next worker's pass does what it left undone."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_GRACE_S)

    def _run(self) -> None:
        while True:
            try:
                self.run_once()
            except ServiceUnavailable as exc:  # busy or down: try again next period
                logger.warning("could not reconcile expired jobs: %s", exc)
            except Exception:  # a bug; keep the worker running
                logger.exception("reconciling expired jobs failed")
            if self._stop.wait(self.period):
                return


class ReconcilerStep(bootsteps.StartStopStep):
    """Runs a Reconciler in the worker's main process for as long as the worker runs."""

    label = "ft reconciler"

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.reconciler: Reconciler | None = None

    def start(self, worker: Any) -> None:
        self.reconciler = Reconciler(worker.app, worker.app.conf.ft_settings)
        self.reconciler.start()

    def stop(self, worker: Any) -> None:
        if self.reconciler is not None:
            self.reconciler.stop()

    shutdown = stop
