"""`ft submit convert`, `ft jobs ...` and `ft worker` through the CLI (in-process, a temporary FT_HOME,
the embedded SQLite broker; jobs are run by calling the worker's run_job directly)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from catalog.jobs import claim_job, create_job, finish_job, get_job
from cli.main import cli
from tests.conftest import FAULTS_TEST, free_port
from worker.jobs.runner import run_job

JOB_FIELDS = {
    "id",
    "kind",
    "status",
    "queue",
    "priority",
    "submitted_by",
    "attempts",
    "max_attempts",
    "lease_owner",
    "lease_expires_at",
    "cancel_requested",
    "progress",
    "error",
    "spec",
    "spec_hash",
    "result",
    "log_path",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
}


@pytest.fixture
def registered(catalog, store, tiny_model_dir):
    """The 50-row fault test set as `faults` and the tiny model as `tiny`."""
    from datasets_prep.register import add_dataset
    from worker.models.registration import register_path

    add_dataset(catalog, store, "faults", FAULTS_TEST, user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")


def new_job(catalog, user="tester", status="queued", error=None) -> int:
    with catalog.session() as s:
        job_id = create_job(s, "convert", {"n": 1}, user, logs_dir=str(catalog.settings.logs)).id
    if status != "queued":
        claim_job(catalog, job_id, "w1", 60)
    if status in ("failed", "succeeded", "cancelled"):
        with catalog.session() as s:
            finish_job(s, job_id, "w1", status, error=error)
    return job_id


def load(catalog, job_id):
    with catalog.session() as s:
        return get_job(s, job_id)


def broker_messages(settings) -> list[dict]:
    with sqlite3.connect(settings.home / "broker.db") as conn:
        return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM kombu_message WHERE visible = 1")]


CONVERT = ["submit", "convert", "faults", "--model", "tiny", "--template", "plain", "--max-len", "256"]


def test_submit_enqueues_and_a_second_submit_is_a_cache_hit(ft, catalog, settings, registered):
    result = ft(*CONVERT, "--priority", "3")
    job_id = int(result.stdout.strip())
    job = load(catalog, job_id)
    assert job.status == "queued" and job.priority == 3 and job.queue == "cpu"
    assert job.spec["dataset_ref"] == "faults:1" and job.spec["max_len"] == 256
    assert len(broker_messages(settings)) == 1  # the message went to the embedded broker

    assert run_job(catalog, job_id, "w1") == "succeeded"
    conversion_id = load(catalog, job_id).result["conversion_id"]

    hit = ft(*CONVERT)
    assert hit.stdout.strip() == (
        f"cache hit: conversion {conversion_id} (faults:1, template plain:1, model tiny, max_len 256)"
    )
    assert json.loads(ft(*CONVERT, "--json").stdout)["conversion_id"] == conversion_id
    assert len(broker_messages(settings)) == 1  # nothing more was enqueued


def test_submit_json_prints_the_job(ft, registered):
    data = json.loads(ft(*CONVERT, "--queue", "gpu", "--json").stdout)
    assert set(data) == JOB_FIELDS and data["status"] == "queued" and data["queue"] == "gpu"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--model", "nope"], 1, "unknown base model 'nope'"),
        (["--template", "nope"], 1, "unknown template 'nope'"),
        (["--max-source-len", "300"], 2, "--max-source-len must be"),
        (["--priority", "10"], 2, "'--priority'"),
        (["--queue", "tpu"], 2, "'--queue'"),
    ],
)
def test_submit_errors_name_the_problem(ft, catalog, registered, args, code, message):
    result = ft(*CONVERT, *args, ok=False)
    assert result.exit_code == code and message in result.output
    assert "Traceback" not in result.output
    assert json.loads(ft("jobs", "list", "--json").stdout) == []  # nothing was recorded


def test_submit_unknown_dataset(ft, registered):
    result = ft("submit", "convert", "nope", "--model", "tiny", "--template", "plain", ok=False)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: unknown dataset 'nope' (known: faults); see `ft datasets list`"


def test_submit_to_an_unreachable_broker_fails_the_job(ft, catalog, registered, monkeypatch):
    port = free_port()
    monkeypatch.setenv("FT_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    result = ft(*CONVERT, ok=False)
    assert result.exit_code == 1
    *report, line = result.output.strip().splitlines()  # the error is one line, after the length report
    assert len(report) == 1 and " train rows at --max-len " in report[0]
    assert line.startswith(f"Error: cannot reach the broker at redis://127.0.0.1:{port}/0 (")
    assert line.endswith("start redis or fix FT_BROKER_URL")
    job = load(catalog, 1)
    assert job.status == "failed" and job.error.startswith("not sent to the broker: cannot reach")


def test_list_and_show(ft, catalog):
    mine = new_job(catalog, status="failed", error="boom")
    theirs = new_job(catalog, user="someone")

    rows = json.loads(ft("jobs", "list", "--json").stdout)
    assert [r["id"] for r in rows] == [theirs, mine] and set(rows[0]) == JOB_FIELDS
    assert [r["id"] for r in json.loads(ft("jobs", "list", "--mine", "--json").stdout)] == [mine]
    assert [r["id"] for r in json.loads(ft("jobs", "list", "--status", "queued", "--json").stdout)] == [
        theirs
    ]
    assert json.loads(ft("jobs", "list", "--kind", "train", "--json").stdout) == []
    table = ft("jobs", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "KIND", "STATUS"] and "boom" in table

    data = json.loads(ft("jobs", "show", str(mine), "--json").stdout)
    assert set(data) == {*JOB_FIELDS, "tensorboard"} and data["tensorboard"] is None  # not a train job
    assert data["status"] == "failed" and data["error"] == "boom" and data["attempts"] == 1
    assert data["lease_owner"] == "w1" and data["spec"] == {"n": 1} and data["finished_at"]
    text = ft("jobs", "show", str(mine)).stdout
    assert f"job {mine}: convert, failed" in text and "boom" in text and '"n": 1' in text


def test_cancel(ft, catalog):
    queued = new_job(catalog)
    assert ft("jobs", "cancel", str(queued)).stdout.strip() == f"job {queued} cancelled"
    again = ft("jobs", "cancel", str(queued), ok=False)
    assert again.exit_code == 1 and f"job {queued} already cancelled" in again.output

    running = new_job(catalog, status="running")
    assert "cancellation requested" in ft("jobs", "cancel", str(running)).stdout
    job = load(catalog, running)
    assert job.status == "running" and job.cancel_requested


def test_retry_sends_the_job_again(ft, catalog, settings):
    job_id = new_job(catalog, status="failed", error="boom")
    assert ft("jobs", "retry", str(job_id)).stdout.strip() == f"job {job_id} queued again on cpu"
    assert load(catalog, job_id).status == "queued"
    assert len(broker_messages(settings)) == 1
    refused = ft("jobs", "retry", str(job_id), ok=False)
    assert refused.exit_code == 1 and "only failed or cancelled jobs can be retried" in refused.output


def test_wait(ft, catalog):
    ok = new_job(catalog, status="succeeded")
    assert ft("jobs", "wait", str(ok)).stdout.strip() == f"job {ok} succeeded"
    bad = new_job(catalog, status="failed", error="boom")
    failed = ft("jobs", "wait", str(bad), ok=False)
    assert failed.exit_code == 1 and f"Error: job {bad} failed: boom" in failed.output
    cancelled = new_job(catalog, status="cancelled")
    assert "was cancelled" in ft("jobs", "wait", str(cancelled), ok=False).output
    pending = new_job(catalog)
    late = ft("jobs", "wait", str(pending), "--timeout", "0.2", ok=False)
    assert late.exit_code == 1 and f"job {pending} is still queued after 0.2s" in late.output


def test_logs(ft, catalog):
    from worker.jobs.handlers import HandlerRegistry

    registry = HandlerRegistry()

    @registry.register("convert")
    def chatty(ctx):
        ctx.log.info("hello from the handler")
        return lambda session: {}

    job_id = new_job(catalog)
    assert "has no log yet" in ft("jobs", "logs", str(job_id)).output
    run_job(catalog, job_id, "w1", handlers=registry)
    text = ft("jobs", "logs", str(job_id)).stdout
    assert "hello from the handler" in text and f"job {job_id} succeeded" in text
    assert ft("jobs", "logs", "-f", str(job_id)).stdout == text


@pytest.mark.parametrize("command", ["show", "cancel", "retry", "wait", "logs"])
def test_unknown_job(ft, catalog, command):
    result = ft("jobs", command, "999", ok=False)
    assert result.exit_code == 1
    assert result.output == "Error: no job 999; see `ft jobs list`\n"


def test_worker_refuses_an_unreachable_broker(ft, catalog, monkeypatch):
    port = free_port()
    monkeypatch.setenv("FT_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    result = ft("worker", ok=False)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach the broker at redis://127.0.0.1:{port}/0")
    assert result.output.count("\n") == 1


def test_worker_refuses_an_uninitialised_catalog(ft):
    result = ft("worker", ok=False)
    assert result.exit_code == 1 and "run `ft init` first" in result.output


def test_worker_refuses_unknown_queues(ft, catalog):
    result = ft("worker", "--queues", "cpu,tpu", ok=False)
    assert result.exit_code == 2 and "choose from cpu, gpu" in result.output


def _commands(group, path):
    import click

    for name, command in group.commands.items():
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from _commands(command, [*path, name])


@pytest.mark.parametrize(
    "path",
    [p for g in ("submit", "jobs") for p in _commands(cli.commands[g], [g])]
    + [["submit"], ["jobs"], ["worker"]],
    ids=" ".join,
)
def test_every_command_has_an_example(ft, path):
    help_text = ft(*path, "--help").stdout
    assert "Example:" in help_text, f"ft {' '.join(path)} --help has no Example"
