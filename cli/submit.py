"""`ft submit KIND ...`: validate a job's whole spec, record it in the catalog, then enqueue it.

Every subcommand resolves names to catalog rows and validates first (errors name the flag), then
calls `enqueue`, which commits the `queued` job row and only then sends the message carrying its
id, and `report_submitted`, which prints the id or (with `--wait`) follows the job to its end.
Other modules add subcommands (`train`, `eval`) to the `submit` group with the same helpers (and
are imported by `cli.main`):

    @submit.command("train")
    @submit_options(default_queue="gpu")
    @pass_app
    def train(app, ..., priority, queue, wait, as_json): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from catalog.models import Job
from cli.context import AppContext, pass_app
from cli.follow import follow_job, job_dict, raise_unless_succeeded
from cli.output import print_json
from datasets_prep.lengths import DEFAULT_MAX_LEN
from worker.jobs.queues import MAX_PRIORITY, QUEUES


@click.group()
def submit() -> None:
    """Enqueue a conversion, training or evaluation job for the workers.

    \b
    Example:
        ft submit convert faults --model smol --template plain --wait
    """


def submit_options(default_queue: str = "cpu") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every `ft submit` subcommand shares: --priority, --queue, --idempotency-key, --wait,
    --json."""
    options = [
        click.option(
            "--priority",
            type=click.IntRange(0, MAX_PRIORITY),
            default=0,
            show_default=True,
            help=f"0-{MAX_PRIORITY}; higher runs first (Redis; the embedded broker is first-in first-out).",
        ),
        click.option(
            "--queue",
            type=click.Choice(QUEUES),
            default=default_queue,
            show_default=True,
            help="Which workers may run it.",
        ),
        click.option(
            "--idempotency-key",
            metavar="KEY",
            help="Submit at most once: a second submit with the same KEY prints the first job's id.",
        ),
        click.option("--wait", is_flag=True, help="Follow the job to its end; exit non-zero if it fails."),
        click.option("--json", "as_json", is_flag=True, help="Print the job as JSON."),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def enqueue(
    app: AppContext,
    kind: str,
    spec: dict[str, Any],
    *,
    queue: str,
    priority: int,
    idempotency_key: str | None = None,
    adapter_name: str | None = None,
) -> Job:
    """Commit a `queued` job with `spec`, then send its message (a job that cannot be sent is
    marked failed, and ServiceUnavailable names the broker). With `idempotency_key`, the job that
    key already made is returned and nothing is sent; `adapter_name` (train) must not be claimed by
    another queued or running job (Conflict)."""
    from catalog.jobs import submit_job
    from worker.jobs.celery_app import make_celery
    from worker.jobs.messages import send_or_fail

    settings = app.settings
    job, created = submit_job(
        app.catalog, kind, spec, settings.user, queue=queue, priority=priority, logs_dir=str(settings.logs),
        idempotency_key=idempotency_key, adapter_name=adapter_name,
    )  # fmt: skip
    if created:
        send_or_fail(make_celery(settings), app.catalog, job)
        train = spec.get("train", {}) if kind == "train" else {}
        if warning := nobody_listens(app, queue, int(train.get("gpus", 1) or 1), train):
            click.echo(warning, err=True)
    else:
        click.echo(already(job, idempotency_key), err=True)
    return job


def nobody_listens(app: AppContext, queue: str, gpus: int = 1, train: dict | None = None) -> str | None:
    """A warning when no live worker takes `queue` or has the GPUs the job asks for (`--gpus`,
    `--gpu-class`, `--min-gpu-memory`): the job then waits. It names the command that would help."""
    from catalog.pool_view import listening
    from worker.jobs.pool import need_of

    need = need_of({**(train or {}), "gpus": gpus})
    with app.catalog.session() as s:
        if listening(s, queue, gpus, need):
            return None
        if listening(s, queue):
            if need.picky:
                return (
                    f"warning: no running worker on queue {queue!r} has {need.describe()} (`ft workers "
                    "list`): the job waits until one does (`ft worker --gpus all` on such a host)"
                )
            return (
                f"warning: no running worker on queue {queue!r} has {gpus} GPUs (`ft workers list`): the "
                f"job waits until one does (`ft worker --gpus all` on a host with {gpus} or more)"
            )
    cpu_only = " (on a machine without a GPU: `ft worker --queues cpu,gpu`)" if queue == "gpu" else ""
    return (
        f"warning: no running worker takes queue {queue!r} (`ft workers list`): the job waits until one "
        f"starts, e.g. `ft worker --queues {queue}`{cpu_only}"
    )


def row_lengths(app: AppContext, session: Any, spec: Any) -> Any:
    """What --max-len and --max-source-len do to the train split of the conversion `spec` (a ConvertSpec;
    datasets_prep.length_report), or None (one line on stderr saying why) when the tokenizer cannot be
    loaded on this machine."""
    from catalog.errors import NotFound
    from catalog.models import BaseModel
    from datasets_prep.length_report import length_report

    base = session.get_one(BaseModel, spec.base_model_id)

    def tokenizer() -> Any:  # only when no registered conversion answers: it imports torch
        from worker.models.directories import tokenizer_of

        return tokenizer_of(app.store, base)

    try:
        return length_report(session, app.store, spec, "train", tokenizer_for=tokenizer)
    except (OSError, ValueError, NotFound) as exc:  # e.g. a model whose files are only on the workers
        click.echo(f"row lengths not checked: {str(exc).splitlines()[0]}", err=True)
        return None


def already(job: Job, key: str | None) -> str:
    return f"job {job.id} was already submitted with --idempotency-key {key} (it is {job.status})"


def report_again(app: AppContext, job: Job, key: str, *, wait: bool, as_json: bool) -> None:
    """The answer to a repeated submit: the first job's id (or JSON), as `report_submitted` prints it."""
    if not as_json:
        click.echo(already(job, key), err=True)
    report_submitted(app, job, wait=wait, as_json=as_json, new=False)


def report_submitted(app: AppContext, job: Job, *, wait: bool, as_json: bool, new: bool = True) -> None:
    """Print the new job's id (or its JSON); with `wait`, follow it and fail if it does not succeed."""
    if wait:
        job = follow_job(app.catalog, job.id)
    if as_json:
        print_json(job_dict(job))
    elif wait:
        click.echo(f"job {job.id} {job.status}" + (f": {_summary(job.result)}" if job.result else ""))
    elif not new:
        click.echo(job.id)
    else:
        click.echo(job.id)
        click.echo(
            f"job {job.id} queued on {job.queue}; follow it with `ft jobs wait {job.id}` "
            f"or `ft jobs logs -f {job.id}`",
            err=True,
        )
    if wait:
        raise_unless_succeeded(job)


def _summary(result: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, dict | list))


@submit.command()
@click.argument("dataset")
@click.option("--model", "-m", required=True, help="Base model whose tokenizer to use (`ft models list`).")
@click.option(
    "--template",
    "-t",
    help="Prompt template, NAME or NAME:VERSION (`ft templates list`)  [default: chat if the model's "
    "tokenizer has a chat template, else plain]",
)
@click.option("--max-len", type=int, default=DEFAULT_MAX_LEN, show_default=True, help="Tokens per example.")
@click.option(
    "--max-source-len",
    type=int,
    default=None,
    help="Tokens kept of the prompt (the rest go to the output)  [default: 3/4 of --max-len]",
)
@submit_options(default_queue="cpu")
@pass_app
def convert(
    app: AppContext,
    dataset: str,
    model: str,
    template: str | None,
    max_len: int,
    max_source_len: int | None,
    priority: int,
    queue: str,
    idempotency_key: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Tokenise DATASET (NAME or NAME:VERSION) with a template for a model's tokenizer.

    The result is cached: the same dataset version, template version, tokenizer and lengths
    reuse the registered conversion instead of enqueuing a job.

    \b
    Example:
        ft submit convert faults --model smol
        ft submit convert faults:2 --model smol --template alpaca --max-len 512 --wait
    """
    from catalog.conversions import find_conversion
    from catalog.jobs import job_for_key
    from catalog.models import Dataset
    from datasets_prep.convert import resolve_convert_spec

    with app.catalog.session() as s:
        spec = resolve_convert_spec(
            s,
            dataset=dataset,
            model=model,
            template=template,
            max_len=max_len,
            max_source_len=max_source_len,
            store=app.store,
        )
        cached = find_conversion(s, spec.cache_key)
        ds = s.get_one(Dataset, spec.dataset_id)
        report = row_lengths(app, s, spec) if cached is None and "train" in ds.split_counts else None
    if report is not None:
        from datasets_prep.length_report import check_lengths

        click.echo(report.line(), err=True)
        check_lengths(report)
    if idempotency_key:
        existing = job_for_key(app.catalog, app.settings.user, idempotency_key, spec.to_json())
        if existing is not None:
            report_again(app, existing, idempotency_key, wait=wait, as_json=as_json)
            return
    if cached is not None:
        if as_json:
            print_json({"cache_hit": True, "conversion_id": cached.id, "cache_key": spec.cache_key})
        else:
            click.echo(
                f"cache hit: conversion {cached.id} ({spec.dataset_ref}, template {spec.template_ref}, "
                f"model {spec.model_name}, max_len {spec.max_len})"
            )
        return
    job = enqueue(
        app, "convert", spec.to_json(), queue=queue, priority=priority, idempotency_key=idempotency_key
    )
    report_submitted(app, job, wait=wait, as_json=as_json)
