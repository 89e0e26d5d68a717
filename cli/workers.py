"""`ft workers list` (alias `ft pool`): the pool's workers, their GPUs, what runs where and for whom."""

from __future__ import annotations

import datetime as dt

import click

from catalog.errors import InvalidInput
from catalog.models import utcnow
from catalog.pool_view import WorkerView, list_workers, prune_workers
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `12h`, `7d` in seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    number = t[:-1] if unit else t
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise InvalidInput(f"--older-than: {text!r} is not a duration (e.g. 90s, 30m, 12h, 7d)") from None
    if value < 0:
        raise InvalidInput(f"--older-than: {text!r} is negative")
    return value


@workers.command()
@click.option(
    "--older-than",
    default="1d",
    show_default=True,
    metavar="DURATION",
    help="Remove workers stopped or gone for longer than this (90s, 30m, 12h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Say which workers would go; remove none.")
@click.option("--json", "as_json", is_flag=True, help="Print the names as JSON.")
@pass_app
def prune(app: AppContext, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Remove the rows of workers that stopped, or went without a word, long ago, so that the pool
    listing shows the pool. Live workers are never removed; a gone worker that comes back registers
    again.

    \b
    Example:
        ft workers prune                  # stopped or gone for over a day
        ft workers prune --older-than 0   # every stopped worker, and those gone for 30 s
        ft workers prune --older-than 12h --dry-run
    """  # fmt: skip
    seconds = parse_duration(older_than)
    with app.catalog.session() as s:
        names = prune_workers(s, seconds, remove=not dry_run)
    if as_json:
        print_json({"removed": [] if dry_run else names, "would_remove": names if dry_run else []})
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(names)} worker(s)" + (": " + ", ".join(names) if names else ""))


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
