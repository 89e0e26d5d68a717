"""`ft submit eval`: validate an evaluation request, record it, enqueue it (one job per base model)."""

from __future__ import annotations

import click

from catalog.models import Job
from cli.context import AppContext, pass_app
from cli.follow import follow_job, job_dict, raise_unless_succeeded
from cli.output import print_json
from cli.submit import enqueue, report_submitted, submit, submit_options

DEFAULT_BATCH_SIZE = 64
"""worker.eval_spec.DEFAULT_BATCH_SIZE, without importing it for --help (a test ties the two)."""
METRIC_NAMES = ("triple-f1", "bleu-rouge-zh", "exact-match")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def _options(f):  # noqa: ANN001, ANN202
    opts = [
        click.argument("adapter_names", metavar="[ADAPTER]...", nargs=-1),
        click.option("--base", "bases", metavar="MODEL", multiple=True,
                     help="Also evaluate the untuned base MODEL (repeatable; alone: only the base)."),
        click.option("--dataset", "-d", required=True, metavar="NAME[:VERSION][:SPLIT]",
                     help="Dataset to evaluate on  [default split: test; version: latest]"),
        click.option("--metric", type=click.Choice(METRIC_NAMES),
                     help="Scoring  [default: triple-f1 if the gold outputs are h_r_t lines, "
                          "else bleu-rouge-zh]"),
        click.option("--template", "-t",
                     help="Prompt template for every model  [default: each adapter's own; the base: the one "
                          "its adapters share, else chat if its tokenizer has one, else plain]"),
        click.option("--limit", type=int, help="Only the first N rows of the split."),
        click.option("--max-new-tokens", type=int, default=512, show_default=True,
                     help="Most tokens per answer (a row stops earlier at EOS or, for triple-f1, a "
                          "repeated line)."),
        click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="Prompts per batch for each model; LoRA adapters (and --base) evaluated together "
                          "share batches of this many prompts times their number."),
        click.option("--max-source-len", type=int, default=2048, show_default=True,
                     help="Longer prompts keep their first N tokens."),
        click.option("--sample", is_flag=True, help="Sample instead of greedy decoding."),
        click.option("--temperature", type=float, help="With --sample  [default: 1.0]"),
        click.option("--top-p", type=float, help="With --sample  [default: 1.0]"),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler."),
        click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="auto", show_default=True,
                     help="Weights' dtype; auto: bfloat16 on a GPU, float32 on the CPU."),
    ]  # fmt: skip
    for opt in reversed(opts):
        f = opt(f)
    return f


@submit.command("eval")
@_options
@submit_options(default_queue="gpu")
@pass_app
def eval_(
    app: AppContext, adapter_names: tuple[str, ...], bases: tuple[str, ...], dataset: str, metric: str | None,
    template: str | None, limit: int | None, max_new_tokens: int, batch_size: int, max_source_len: int,
    sample: bool, temperature: float | None, top_p: float | None, seed: int, dtype: str, priority: int,
    queue: str, wait: bool, as_json: bool,
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
    from worker.eval_spec import resolve_eval_specs

    with app.catalog.session() as s:
        specs = resolve_eval_specs(
            s, app.store, adapters=adapter_names, bases=bases, dataset=dataset, metric=metric,
            template=template, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
            max_source_len=max_source_len, sample=sample, temperature=temperature, top_p=top_p, seed=seed,
            dtype=dtype,
        )  # fmt: skip
    jobs: list[Job] = []
    for spec in specs:
        jobs.append(enqueue(app, "eval", spec.to_json(), queue=queue, priority=priority))
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
