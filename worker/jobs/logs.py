"""The per-job log file: everything a job's handler logs, appended to `$FT_HOME/logs/job-N.log`.

Each attempt appends (a re-delivered job keeps the log of its earlier attempts), so `ft jobs logs N`
shows the whole story. The logger also propagates to the worker's own log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catalog.models import Job
from catalog.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def log_path(job: Job, settings: Settings) -> Path:
    """Where the job logs: the path recorded at submission, else `$FT_HOME/logs/job-N.log`."""
    return Path(job.log_path) if job.log_path else settings.logs / f"job-{job.id}.log"


@contextmanager
def job_logger(job: Job, settings: Settings) -> Iterator[logging.Logger]:
    """A logger named `ft.job.N` that writes to the job's log file while the block runs."""
    path = log_path(job, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger(f"ft.job.{job.id}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()
