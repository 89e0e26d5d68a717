"""`ft worker`: run a Celery worker on this machine, taking jobs from the cpu and/or gpu queues, one job
process per GPU; the worker registers itself and its GPUs in the catalog (worker.jobs.pool)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.context import AppContext, pass_app
from worker.jobs.queues import QUEUES

if TYPE_CHECKING:
    from celery import Celery

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
    "--gpus",
    "gpu_choice",
    default="all",
    show_default=True,
    help="GPUs this worker uses: all, none, or indices like 0,1. Each job process gets one "
    "(CUDA_VISIBLE_DEVICES). FT_FAKE_GPUS=2x24GiB declares GPUs on a machine without them.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    help="Jobs run at once (one process each)  [default: one per GPU, else 1]",
)
@click.option(
    "--loglevel",
    "-l",
    type=click.Choice(LOGLEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option("--name", help="Worker name; a NAME without @ becomes NAME@HOST  [default: ft-PID@HOST]")
@pass_app
def worker(
    app: AppContext,
    queues: list[str],
    gpu_choice: str,
    concurrency: int | None,
    loglevel: str,
    name: str | None,
) -> None:
    """Start a worker on this machine; it runs queued jobs until stopped (Ctrl-C or SIGTERM).

    Each job runs in a fresh process, which exits afterwards and frees its memory; with GPUs, each
    process gets a GPU of its own (one job per GPU unless --concurrency asks for more). The worker
    shows in `ft workers list` while it runs (heartbeat) and as stopped after. On stop, the
    worker finishes the job it is running (a second Ctrl-C stops at once; the job's lease then
    runs out and another worker resumes it). Jobs of workers that died are re-queued.

    \b
    Example:
        ft worker
        ft worker --queues gpu --concurrency 2
        ft worker --gpus 0,1
        FT_FAKE_GPUS=2x24GiB ft worker --queues cpu
        FT_BROKER_URL=redis://queue-host:6379/0 ft worker --queues cpu,gpu
    """
    from worker.jobs.celery_app import make_celery
    from worker.jobs.gpus import FAKE_ENV, GpuSpecError, discover_gpus, nvml_usage, select_gpus
    from worker.jobs.messages import check_broker, declare_queues, redact
    from worker.jobs.pool import WorkerPresence, default_concurrency

    settings = app.settings
    catalog = app.catalog  # refuse an uninitialised or outdated catalog before starting
    try:
        gpus = select_gpus(gpu_choice, discover_gpus(os.environ))
    except GpuSpecError as exc:
        raise click.UsageError(str(exc)) from None
    concurrency = concurrency or default_concurrency(gpus)
    celery = make_celery(settings)
    check_broker(celery)
    declare_queues(celery, queues)
    host = socket.gethostname()
    hostname = name or f"ft-{os.getpid()}@{host}"
    if "@" not in hostname:  # Celery names a node NAME@HOST; the catalog's row must carry the same name
        hostname = f"{hostname}@{host}"
    shown = ", ".join(f"{g.index}:{g.gpu_class}" for g in gpus) or "none"
    click.echo(
        f"ft worker {hostname}: queues {','.join(queues)}, concurrency {concurrency}, "
        f"broker {redact(settings.broker_url)}, catalog {redact(settings.database_url)}, gpus {shown}",
        err=True,
    )
    if not gpus and gpu_choice == "all" and "gpu" in queues and _default_queues() == "cpu,gpu":
        click.echo(
            "ft worker: an NVIDIA driver is present but no GPU was found: install ft[gpu] (NVML) "
            "so that each job gets a GPU of its own",
            err=True,
        )
    measure = None if os.environ.get(FAKE_ENV, "").strip() else nvml_usage  # declared GPUs: no readings
    with WorkerPresence(catalog, hostname, host, queues, gpus, measure=measure) as presence:
        celery.conf.ft_pool = presence.config(hide_gpus=gpu_choice.strip().lower() == "none")
        exitcode = _run(celery, hostname, queues, concurrency, loglevel)
    click.echo(f"ft worker {hostname} stopped", err=True)
    if exitcode:
        raise SystemExit(exitcode)


def _run(celery: Celery, hostname: str, queues: list[str], concurrency: int, loglevel: str) -> int:
    """Run the Celery worker until it is stopped; returns its exit code."""
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
    return w.exitcode or 0
