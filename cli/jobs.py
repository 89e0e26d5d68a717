"""`ft jobs list|show|logs|cancel|retry|wait`: the queue as the catalog sees it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from catalog.jobs import get_job, list_jobs, request_cancel, retry_job
from catalog.models import JOB_KINDS, JOB_STATUSES
from cli.context import AppContext, pass_app
from cli.follow import follow_job, follow_log, format_progress, job_dict, raise_unless_succeeded
from cli.output import print_json, print_table, when


@click.group()
def jobs() -> None:
    """List, inspect, follow, cancel and retry jobs.

    \b
    Example:
        ft jobs list --mine
        ft jobs logs -f 7
    """


@jobs.command("list")
@click.option("--mine", is_flag=True, help="Only jobs submitted by me (FT_USER).")
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(JOB_KINDS), help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_(
    app: AppContext, mine: bool, status: str | None, kind: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first.

    \b
    Example:
        ft jobs list
        ft jobs list --mine --status running --json
    """
    user = app.settings.user if mine else None
    with app.catalog.session() as s:
        rows = list_jobs(s, user=user, status=status, kind=kind, limit=limit)
    if as_json:
        print_json([job_dict(j) for j in rows])
        return
    print_table(
        ["id", "kind", "status", "queue", "pri", "tries", "user", "created", "progress / error"],
        [
            [
                j.id,
                j.kind,
                j.status + (" (cancelling)" if j.cancel_requested and j.status == "running" else ""),
                j.queue,
                j.priority,
                f"{j.attempts}/{j.max_attempts}",
                j.submitted_by,
                when(j.created_at),
                _brief(j.error) if j.status == "failed" else format_progress(j.progress),
            ]
            for j in rows
        ],
        empty="(no jobs)",
    )


def _brief(text: str | None, width: int = 70) -> str:
    text = (text or "").splitlines()[0] if text else ""
    return text if len(text) <= width else text[: width - 1] + "…"


@jobs.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: AppContext, job_id: int, as_json: bool) -> None:
    """Show one job: state, attempts, lease, progress, error, spec and result.

    \b
    Example:
        ft jobs show 7
        ft jobs show 7 --json
    """
    with app.catalog.session() as s:
        job = get_job(s, job_id)
    data = job_dict(job)
    board = app.settings.tensorboard_dir(job.id)
    data["tensorboard"] = str(board) if job.kind == "train" and board.is_dir() else None
    if as_json:
        print_json(data)
        return
    click.echo(
        f"job {job.id}: {job.kind}, {job.status}" + (" (cancel requested)" if job.cancel_requested else "")
    )
    rows = [
        ("submitted by", f"{job.submitted_by}, queue {job.queue}, priority {job.priority}"),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("lease", f"{job.lease_owner} until {when(job.lease_expires_at)}" if job.lease_owner else "-"),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
        ("progress", format_progress(job.progress) or "-"),
        ("error", job.error or "-"),
        ("log", job.log_path or "-"),
    ]
    if data["tensorboard"]:
        rows.append(("tensorboard", f"tensorboard --logdir {data['tensorboard']}"))
    for key, value in rows:
        click.echo(f"  {key + ':':<14}{value}")
    for key in ("spec", "result"):
        body = json.dumps(data[key], indent=2, ensure_ascii=False, sort_keys=True)
        click.echo(f"  {key}:")
        click.echo("\n".join("    " + line for line in body.splitlines()))


@jobs.command()
@click.argument("job_id", type=int)
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the PNG  [default: job-N-curves.png in FT_HOME's logs]")  # fmt: skip
@pass_app
def plot(app: AppContext, job_id: int, out: Path | None) -> None:
    """Draw a training job's loss, eval loss, --eval-metric and learning rate per step as a PNG, and
    print its path (from the TensorBoard events it wrote; works while it runs).

    \b
    Example:
        ft jobs plot 7
        ft jobs plot 7 -o curves.png
    """
    from catalog.errors import InvalidInput
    from worker.train.curves import metric_tag, plot_curves, read_curves

    with app.catalog.session() as s:
        job = get_job(s, job_id)
        kind, name, metric = job.kind, (job.spec or {}).get("name"), metric_tag(job.spec)
    if kind != "train":
        raise InvalidInput(f"job {job_id} is a {kind} job: only training jobs have curves")
    curves = read_curves(app.settings.tensorboard_dir(job_id), metric)
    out = out or app.settings.logs / f"job-{job_id}-curves.png"
    plot_curves(curves, out, f"job {job_id}" + (f": {name}" if name else ""))
    points = ", ".join(f"{tag} {len(v)}" for tag, v in curves.items())
    click.echo(f"{out}  ({points} points)")


@jobs.command()
@click.argument("job_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@pass_app
def logs(app: AppContext, job_id: int, follow: bool) -> None:
    """Print a job's log (written by the worker that runs it).

    \b
    Example:
        ft jobs logs 7
        ft jobs logs -f 7
    """
    from worker.jobs.logs import log_path

    with app.catalog.session() as s:
        job = get_job(s, job_id)
    path = log_path(job, app.settings)
    if follow:
        follow_log(app.catalog, job.id, path)
    elif path.is_file():
        click.echo(path.read_text(encoding="utf-8", errors="replace"), nl=False)
    else:
        click.echo(f"job {job.id} has no log yet at {path} (it is {job.status})", err=True)


@jobs.command()
@click.argument("job_id", type=int)
@pass_app
def cancel(app: AppContext, job_id: int) -> None:
    """Cancel a queued job, or ask a running one to stop at its next step.

    \b
    Example:
        ft jobs cancel 7
    """
    with app.catalog.session() as s:
        job = request_cancel(s, job_id)
    if job.status == "cancelled":
        click.echo(f"job {job.id} cancelled")
    else:
        click.echo(f"job {job.id}: cancellation requested; {job.lease_owner} stops it at its next step")


@jobs.command()
@click.argument("job_id", type=int)
@pass_app
def retry(app: AppContext, job_id: int) -> None:
    """Queue a failed or cancelled job again, with the same spec.

    \b
    Example:
        ft jobs retry 7
    """
    from worker.jobs.celery_app import make_celery
    from worker.jobs.messages import send_or_fail

    with app.catalog.session() as s:
        job = retry_job(s, job_id)
    send_or_fail(make_celery(app.settings), app.catalog, job)
    click.echo(f"job {job.id} queued again on {job.queue}")


@jobs.command()
@click.argument("job_id", type=int)
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@pass_app
def wait(app: AppContext, job_id: int, timeout: float | None, quiet: bool) -> None:
    """Wait for a job to end; exit 0 if it succeeded, non-zero if it failed, was cancelled or
    did not end within --timeout.

    \b
    Example:
        ft jobs wait 7
        ft jobs wait 7 --timeout 3600 && ft adapters list
    """
    job = follow_job(app.catalog, job_id, timeout=timeout, quiet=quiet)
    if job.status in ("queued", "running"):
        raise click.ClickException(f"job {job.id} is still {job.status} after {timeout:g}s")
    raise_unless_succeeded(job)
    click.echo(f"job {job.id} succeeded")
