"""`ft submit eval`: validate an evaluation request, record it, enqueue it (one job per base model)."""

from __future__ import annotations

from typing import Any

import click

from catalog.models import Job
from cli.context import AppContext, pass_app
from cli.flags import apply, dataclass_options
from cli.follow import follow_job, job_dict, raise_unless_succeeded
from cli.output import print_json
from cli.submit import enqueue, report_submitted, submit, submit_options

EVAL_KEYS = ("limit", "max_source_len", "dtype", "fused_kernels")
"""Fields of worker.spec.EvalSpec that are flags; the decoding flags come from worker.evaluation.decoding."""


def _options(f):  # noqa: ANN001, ANN202
    from worker.evaluation.decoding import Decoding
    from worker.evaluation.metrics import METRICS
    from worker.spec import DTYPES, EvalSpec

    opts = [
        click.argument("adapter_names", metavar="[ADAPTER]...", nargs=-1),
        click.option("--base", "bases", metavar="MODEL", multiple=True,
                     help="Also evaluate the untuned base MODEL (repeatable; alone: only the base)."),
        click.option("--dataset", "-d", required=True, metavar="NAME[:VERSION][:SPLIT]",
                     help="Dataset to evaluate on  [default split: test; version: latest]"),
        click.option("--metric", type=click.Choice(sorted(METRICS)),
                     help="Scoring  [default: triple-f1 if the gold outputs are h_r_t lines, "
                          "else bleu-rouge-zh]"),
        click.option("--template", "-t",
                     help="Prompt template for every model  [default: each adapter's own; the base: the one "
                          "its adapters share, else chat if its tokenizer has one, else plain]"),
        *dataclass_options([(None, EvalSpec)], only=EVAL_KEYS),
        *dataclass_options([(None, Decoding)]),
    ]  # fmt: skip
    f = apply(opts, f)
    f.__doc__ = (f.__doc__ or "").replace("DTYPES", ", ".join(DTYPES))
    return f


@submit.command("eval")
@_options
@submit_options(default_queue="gpu")
@pass_app
def eval_(
    app: AppContext, adapter_names: tuple[str, ...], bases: tuple[str, ...], dataset: str, metric: str | None,
    template: str | None, priority: int, queue: str, idempotency_key: str | None, wait: bool, as_json: bool,
    **flags: Any,
) -> None:  # fmt: skip
    """Evaluate adapters (and/or the untuned --base) on a dataset split; register the scores.

    All adapters of one base model are evaluated in ONE job that loads the base once; adapters of
    different base models make one job per base model. Decoding is greedy; generation stops at EOS,
    and for triple-f1 at the first repeated line. Each model gets an evaluation row (metrics,
    tokens/s, generation time, peak memory) and a predictions artifact; see
    `ft adapters compare` and `ft adapters evals`.

    \b
    Example:
        ft submit eval faults-lora faults-freeze --dataset faults --wait
        ft submit eval faults-lora --base smol --dataset faults:2:test --metric triple-f1
        ft submit eval --base smol --dataset adgen:dev --template alpaca --limit 100
        ft submit eval adgen-qlora -d adgen --sample --temperature 0.7 --top-p 0.9 --seed 1
    """
    from worker.resolve import resolve_eval_specs

    with app.catalog.session() as s:
        specs = resolve_eval_specs(
            s, app.store, adapters=adapter_names, bases=bases, dataset=dataset, metric=metric,
            template=template, **{k: v for k, v in flags.items() if v is not None},
        )  # fmt: skip
    jobs: list[Job] = []
    for n, spec in enumerate(specs, 1):
        key = idempotency_key if idempotency_key is None or len(specs) == 1 else f"{idempotency_key}#{n}"
        jobs.append(enqueue(app, "eval", spec.to_json(), queue=queue, priority=priority, idempotency_key=key))
        if not as_json:
            click.echo(
                f"eval {', '.join(t.label for t in spec.targets)} on {spec.dataset_ref}:{spec.split} "
                f"({spec.metric}, base {spec.model_name})",
                err=True,
            )
    if len(jobs) == 1:
        report_submitted(app, jobs[0], wait=wait, as_json=as_json)
        return
    if not as_json:
        for job in jobs:
            report_submitted(app, job, wait=wait, as_json=False)
        return
    finished = [follow_job(app.catalog, job.id) if wait else job for job in jobs]
    print_json([job_dict(job) for job in finished])
    for job in finished if wait else ():
        raise_unless_succeeded(job)
