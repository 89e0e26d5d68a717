"""`ft workers list` (alias `ft pool`): the pool's workers, their GPUs, what runs where and for whom."""

from __future__ import annotations

import datetime as dt

import click

from catalog.models import utcnow
from catalog.workers import WorkerView, list_workers
from cli.context import AppContext, pass_app
from cli.follow import format_progress
from cli.output import human_bytes, human_seconds, print_json, print_table


@click.group()
def workers() -> None:
    """The pool: every worker, its GPUs and the job on each.

    \b
    Example:
        ft workers list
        ft pool --json
    """


def _options(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    f = click.option("--running", is_flag=True, help="Leave out workers that stopped cleanly.")(f)
    return f


@workers.command("list")
@_options
@pass_app
def list_(app: AppContext, as_json: bool, running: bool) -> None:
    """List workers (alive first) and their GPUs: class, memory (in use / total), utilisation, the job on
    each, who submitted it and its progress. Memory in use and utilisation are NVML's readings at the
    last heartbeat (none for declared GPUs). A worker that missed three heartbeats (30 s) is shown as
    gone, its GPUs free.

    \b
    Example:
        ft workers list
        ft workers list --running --json
    """
    _show(app, as_json, running)


@click.command()
@_options
@pass_app
def pool(app: AppContext, as_json: bool, running: bool) -> None:
    """The pool at a glance (the same as `ft workers list`).

    \b
    Example:
        ft pool
        ft pool --json
    """
    _show(app, as_json, running)


def _show(app: AppContext, as_json: bool, running: bool) -> None:
    now = utcnow()
    with app.catalog.session() as s:
        views = list_workers(s, now=now, include_stopped=not running)
    if as_json:
        print_json([v.to_dict() for v in views])
        return
    print_table(
        ["worker", "state", "queues", "gpu", "class", "memory", "util", "job", "user", "progress"],
        [row for v in views for row in _rows(v, now)],
        empty="(no workers: start one with `ft worker`)",
    )


def _memory(used: int | None, total: int) -> str:
    return human_bytes(total) if used is None else f"{human_bytes(used)} / {human_bytes(total)}"


def _rows(view: WorkerView, now: dt.datetime) -> list[list[object]]:
    state = view.state
    if state != "alive":
        state += f" {human_seconds((now - (view.stopped_at or view.last_seen)).total_seconds())} ago"
    head = [view.name, state, ",".join(view.queues)]
    if not view.gpus:
        return [[*head, "-", "", "", "", "", "", ""]]
    rows = []
    for i, gpu in enumerate(view.gpus):
        rows.append(
            [
                *(head if i == 0 else ["", "", ""]),
                gpu.index,
                gpu.gpu_class,
                _memory(gpu.memory_used_bytes, gpu.memory_bytes),
                f"{gpu.utilization}%" if gpu.utilization is not None else "-",
                gpu.job_id if gpu.job_id is not None else "free",
                gpu.submitted_by,
                format_progress(gpu.progress),
            ]
        )
    return rows
