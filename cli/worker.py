"""`ft worker`: run a Celery worker on this machine, taking jobs from the cpu and/or gpu queues."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import click

from cli.context import AppContext, pass_app
from worker.jobs.queues import QUEUES

LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _default_queues() -> str:
    """`cpu,gpu` where an NVIDIA driver is present, else `cpu` (checked without initialising CUDA)."""
    has_gpu = shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()
    return "cpu,gpu" if has_gpu else "cpu"


def _parse_queues(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    queues = [q.strip() for q in (value or _default_queues()).split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise click.BadParameter(f"choose from {', '.join(QUEUES)} (comma-separated), got {value!r}")
    return queues


@click.command()
@click.option(
    "--queues",
    "-Q",
    callback=_parse_queues,
    help="Comma-separated queues to take jobs from  [default: cpu,gpu with an NVIDIA GPU, else cpu]",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs run at once (one process each).",
)
@click.option(
    "--loglevel",
    "-l",
    type=click.Choice(LOGLEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option("--name", help="Worker name  [default: ft-PID@HOST]")
@pass_app
def worker(app: AppContext, queues: list[str], concurrency: int, loglevel: str, name: str | None) -> None:
    """Start a worker on this machine; it runs queued jobs until stopped (Ctrl-C or SIGTERM).

    Each job runs in a fresh process, which exits afterwards and frees its memory. On stop, the
    worker finishes the job it is running (a second Ctrl-C stops at once; the job's lease then
    runs out and another worker resumes it). Jobs of workers that died are re-queued.

    \b
    Example:
        ft worker
        ft worker --queues gpu --concurrency 2
        FT_BROKER_URL=redis://queue-host:6379/0 ft worker --queues cpu,gpu
    """
    from worker.jobs.celery_app import make_celery
    from worker.jobs.messages import check_broker, declare_queues, redact

    settings = app.settings
    app.catalog  # noqa: B018  # refuse an uninitialised or outdated catalog before starting
    celery = make_celery(settings)
    check_broker(celery)
    declare_queues(celery, queues)
    hostname = name or f"ft-{os.getpid()}@{socket.gethostname()}"
    click.echo(
        f"ft worker {hostname}: queues {','.join(queues)}, concurrency {concurrency}, "
        f"broker {redact(settings.broker_url)}, catalog {redact(settings.database_url)}",
        err=True,
    )
    w = celery.Worker(
        hostname=hostname,
        queues=queues,
        concurrency=concurrency,
        pool="prefork",
        max_tasks_per_child=1,
        loglevel=loglevel.upper(),
        quiet=True,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    )
    w.start()
    click.echo(f"ft worker {hostname} stopped", err=True)
    if w.exitcode:
        raise SystemExit(w.exitcode)
