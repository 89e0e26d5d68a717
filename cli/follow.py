"""Showing jobs: a job as JSON, its progress on one line, and following it (or its log) to the end.

Shared by `ft jobs ...` and every `ft submit ... --wait`. Following polls the catalog, which is
the truth about a job; progress goes to stderr so stdout stays clean for `--json` and scripts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from catalog.db import Catalog
from catalog.errors import JobFailed
from catalog.jobs import get_job
from catalog.models import FINISHED_STATUSES, Job
from cli.output import human_seconds

POLL_SECONDS = 0.5
LOG_PROGRESS_SECONDS = 10.0
"""When stderr is not a terminal, progress lines are printed at most this often."""


def job_dict(job: Job) -> dict[str, Any]:
    """Every field of a job, JSON-ready (datetimes become ISO strings when printed)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "queue": job.queue,
        "priority": job.priority,
        "submitted_by": job.submitted_by,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "lease_owner": job.lease_owner,
        "lease_expires_at": job.lease_expires_at,
        "cancel_requested": job.cancel_requested,
        "progress": job.progress,
        "error": job.error,
        "spec": job.spec,
        "spec_hash": job.spec_hash,
        "result": job.result,
        "log_path": job.log_path,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "updated_at": job.updated_at,
    }


def format_progress(progress: dict[str, Any] | None) -> str:
    """`stage step/total (pct%) key=value ...`, from whatever a handler reported."""
    if not progress:
        return ""
    rest = dict(progress)
    parts = []
    if stage := rest.pop("stage", None):
        parts.append(str(stage))
    for done_key, total_key, unit in (("step", "total", "steps"), ("rows_done", "rows_total", "rows")):
        done, total = rest.pop(done_key, None), rest.pop(total_key, None)
        if done is not None and total:
            parts.append(f"{done}/{total} {unit} ({100 * float(done) / float(total):.0f}%)")
        elif done is not None:
            parts.append(f"{done} {unit}")
    if (eta := rest.pop("eta_s", None)) is not None:
        rest["eta"] = human_seconds(eta)
    for key, value in rest.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict | list):
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def status_line(job: Job) -> str:
    line = f"job {job.id} {job.kind}: {job.status}"
    if job.status == "queued":
        line += f" (waiting for a worker on queue {job.queue})"
    elif job.status == "running":
        line += f" (attempt {job.attempts}/{job.max_attempts} on {job.lease_owner})"
    if job.status == "running" and (progress := format_progress(job.progress)):
        line += f" {progress}"
    return line


def follow_job(catalog: Catalog, job_id: int, *, timeout: float | None = None, quiet: bool = False) -> Job:
    """Poll the job until it finishes (or `timeout` seconds pass); show changes on stderr.
    Returns the job as last seen."""
    deadline = None if timeout is None else time.monotonic() + timeout
    tty = sys.stderr.isatty()
    shown, shown_status, shown_at = "", "", 0.0
    while True:
        with catalog.session() as s:
            job = get_job(s, job_id)
        line = status_line(job)
        if not quiet and line != shown:
            if tty:
                click.echo(f"\r\033[K{line}", err=True, nl=False)
                shown = line
            elif job.status != shown_status or time.monotonic() - shown_at >= LOG_PROGRESS_SECONDS:
                click.echo(line, err=True)  # not a terminal: a line per state, progress now and then
                shown, shown_status, shown_at = line, job.status, time.monotonic()
        if job.status in FINISHED_STATUSES or (deadline is not None and time.monotonic() >= deadline):
            if not quiet and tty:
                click.echo(err=True)
            return job
        time.sleep(POLL_SECONDS)


def raise_unless_succeeded(job: Job) -> None:
    """JobFailed (exit 1) for a failed or cancelled job, with its error."""
    if job.status == "failed":
        raise JobFailed(
            f"job {job.id} failed: {job.error or 'no error recorded'} (see `ft jobs logs {job.id}`)"
        )
    if job.status == "cancelled":
        raise JobFailed(f"job {job.id} was cancelled")


def follow_log(catalog: Catalog, job_id: int, path: Path) -> None:
    """Print the job's log as it grows, until the job has finished and the log is read to its end."""
    offset, last_pass = 0, False
    while True:
        with catalog.session() as s:
            finished = get_job(s, job_id).status in FINISHED_STATUSES
        if path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            if chunk:
                click.echo(chunk, nl=False)
        if last_pass:
            return
        last_pass = finished  # one more read: the worker logs its last line just after finishing
        time.sleep(POLL_SECONDS)
