"""Training through the job runner and through real workers: every method registers an adapter
that reloads and generates; `ft submit train --wait` on a real worker; a worker killed mid-run
whose job resumes on another worker from its last complete checkpoint, registering one adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from catalog.adapters import get_adapter, list_adapters
from catalog.jobs import create_job, get_job
from tests.conftest import FAULTS_TRAIN
from tests.worker.procs import run_ft, subprocess_env
from worker.jobs.runner import run_job
from worker.resolve import resolve_train_spec

VARIANTS = {
    "freeze": ("freeze", {"layers": 1}),
    "ptuning": ("ptuning", {"virtual_tokens": 4}),
    "ptuning-v2": ("ptuning-v2", {"virtual_tokens": 4, "prefix_projection": True}),
    "lora": ("lora", {"rank": 4}),
    "dora": ("lora", {"rank": 4, "dora": True}),
    "lora-int8": ("lora", {"rank": 4, "base_bits": 8}),
    "qlora": ("qlora", {"rank": 4}),
    "full": ("full", {}),
}
SHORT = {
    "max_steps": 3,
    "batch_size": 2,
    "grad_accum": 1,
    "save_steps": 2,
    "logging_steps": 1,
}


@pytest.fixture
def trainable(catalog, store, tiny_model_dir, tmp_path):
    """`faults` (24 real rows) and the tiny model `tiny` registered."""
    from datasets_prep.register import add_dataset
    from worker.models.registration import register_path

    rows = tmp_path / "faults24.jsonl"
    rows.write_text("".join(FAULTS_TRAIN.read_text(encoding="utf-8").splitlines(True)[:24]), encoding="utf-8")
    add_dataset(catalog, store, "faults", rows, "triples", splits={"test": 4}, user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
    return catalog


def submit_train(catalog, settings, name: str, method: str, flags: dict, **train) -> int:
    with catalog.session() as s:
        spec = resolve_train_spec(
            s, name=name, method=method, model="tiny", dataset="faults", template="plain",
            method_flags=flags, train_flags={**SHORT, **train}, max_len=192, max_source_len=128,
        )  # fmt: skip
        return create_job(s, "train", spec.to_json(), "tester", queue="gpu", logs_dir=str(settings.logs)).id


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_trains_registers_reloads_and_generates(trainable, settings, store, variant):
    import torch
    from transformers import AutoTokenizer

    from worker.methods.saving import load_for_inference

    method, flags = VARIANTS[variant]
    job_id = submit_train(trainable, settings, f"faults-{variant}", method, flags)
    status = run_job(trainable, job_id, "test-worker", store=store)
    with trainable.session() as s:
        job = get_job(s, job_id)
        assert status == "succeeded", job.error
        adapter = get_adapter(s, f"faults-{variant}")
        base_dir = adapter.base_model.uri
        assert job.result["adapter_id"] == adapter.id and job.progress["step"] == 3
        assert adapter.method == method and adapter.job_id == job_id and adapter.dataset.ref == "faults:1"
        assert adapter.template.ref == "plain:1" and adapter.hyperparameters["method"]
        assert 0 < adapter.trainable_params <= adapter.total_params
        if method == "full":
            assert adapter.trainable_params == adapter.total_params
        else:
            assert adapter.trainable_params < adapter.total_params
        assert adapter.peak_memory_bytes > 0 and adapter.train_seconds > 0 and adapter.tokens_seen > 0
        assert adapter.final_loss is not None and adapter.ft_version
        uri, sha = adapter.artifact_uri, adapter.sha256
    assert store.verify(uri) == [] and uri.endswith(sha)
    root = store.path(uri)
    card = (root / "README.md").read_text()
    assert f"faults-{variant}" in card and "faults:1" in card
    if method in ("lora", "qlora", "ptuning", "ptuning-v2"):
        assert (root / "adapter_config.json").is_file() and (root / "adapter_model.safetensors").is_file()
    assert not (settings.artifacts / ".jobs" / str(job_id)).exists()  # checkpoints dropped on success
    model = load_for_inference(base_dir, root, method)
    tok = AutoTokenizer.from_pretrained(base_dir)
    ids = tok("发动机故障", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_spec_errors_name_the_flag_and_queue_nothing(trainable, settings):
    from catalog.errors import Conflict, InvalidInput, NotFound
    from catalog.models import Job

    cases = [
        (dict(method="lora", flags={"rank": 0}), InvalidInput, "--rank"),
        (dict(method="lora", flags={}, train={"lr": 5}), InvalidInput, "--lr"),
        (dict(method="lora", flags={}, train={"batch_size": 0}), InvalidInput, "--batch-size"),
        (dict(method="nope", flags={}), InvalidInput, "--method"),
        (dict(method="lora", flags={}, train={"eval_split": "dev"}), NotFound, "--eval-split"),
    ]
    for case, error, flag in cases:
        with pytest.raises(error, match=flag):
            submit_train(trainable, settings, "x", case["method"], case["flags"], **case.get("train", {}))
    submit_train(trainable, settings, "taken", "lora", {})
    with pytest.raises(Conflict, match="already training"):
        submit_train(trainable, settings, "taken", "lora", {})
    with trainable.session() as s:
        assert s.query(Job).count() == 1


@pytest.mark.services
@pytest.mark.timeout(240)
def test_submit_train_wait_on_a_real_worker_then_adapters_cli(trainable, workers, ft, tmp_path):
    env = subprocess_env()
    workers.start(env, "--queues", "cpu,gpu")
    done = run_ft(
        env, "submit", "train", "--method", "lora", "--rank", "4", "-m", "tiny", "-d", "faults",
        "--name", "faults-lora", "--max-steps", "4", "--batch-size", "2", "--grad-accum", "1",
        "--max-len", "192", "--max-source-len", "128", "-o", "logging_steps=1", "--wait", timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + workers.dump()
    assert "succeeded" in done.stdout and "adapter faults-lora" in done.stdout
    listed = json.loads(ft("adapters", "list", "--json").output)
    assert [a["name"] for a in listed] == ["faults-lora"] and listed[0]["method"] == "lora"
    shown = json.loads(ft("adapters", "show", "faults-lora", "--json").output)
    assert shown["hyperparameters"]["method"]["rank"] == 4 and shown["sha256"]
    job = json.loads(ft("jobs", "show", str(shown["job_id"]), "--json").output)
    assert job["tensorboard"] and list(Path(job["tensorboard"]).glob("events.out.tfevents.*"))
    assert f"tensorboard --logdir {job['tensorboard']}" in ft("jobs", "show", str(shown["job_id"])).output
    png = tmp_path / "curves.png"
    plotted = ft("jobs", "plot", str(shown["job_id"]), "-o", str(png)).output
    assert plotted.startswith(f"{png}  (train/loss 4, train/lr 4")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    convert = json.loads(ft("submit", "convert", "faults", "-m", "tiny", "--max-len", "256", "--json").stdout)
    refused = ft("jobs", "plot", str(convert["id"]), ok=False)
    assert refused.exit_code == 2 and "only training jobs have curves" in refused.output
    out = tmp_path / "export"
    ft("adapters", "export", "faults-lora", str(out))
    assert (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    front = (out / "README.md").read_text().split("---")[1]
    assert "base_model:" not in front and str(tmp_path) not in front  # a path is not a hub id
    merged = tmp_path / "merged"
    said = ft("adapters", "export", "faults-lora", str(merged), "--merge").output
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    assert "merged faults-lora into tiny as float32: " in said  # the base's own dtype
    card = (merged / "README.md").read_text()
    assert "saved as **float32**" in card and shown["sha256"] in card and "merged" in card
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float32"
    ft("adapters", "export", "faults-lora", str(tmp_path / "m16"), "--merge", "--dtype", "bf16")
    assert json.loads((tmp_path / "m16" / "config.json").read_text())["dtype"] == "bfloat16"
    again = ft("adapters", "export", "faults-lora", str(out), ok=False)
    assert again.exit_code != 0 and "already exists" in again.output
    clash = run_ft(
        env, "submit", "train", "--method", "lora", "-m", "tiny", "-d", "faults", "--name", "faults-lora"
    )
    assert clash.returncode != 0 and "already exists" in clash.stderr
    ft("adapters", "rm", "faults-lora", "--yes")
    assert json.loads(ft("adapters", "list", "--json").output) == []


@pytest.mark.services
@pytest.mark.timeout(300)
def test_a_killed_training_worker_resumes_from_its_checkpoint(trainable, settings, workers):
    env = subprocess_env(FT_LEASE_SECONDS="3")
    first = workers.start(env, "--queues", "cpu,gpu")
    job_id = submit_train(
        trainable, settings, "faults-resume", "lora", {"rank": 4},
        max_steps=1200, batch_size=1, grad_accum=1, save_steps=25, epochs=100,
    )  # fmt: skip
    from worker.jobs.celery_app import make_celery
    from worker.jobs.messages import send_job

    send_job(make_celery(settings), job_id, queue="gpu", priority=0)
    checkpoints = settings.artifacts / ".jobs" / str(job_id) / "checkpoints"
    deadline = time.monotonic() + 150
    seen_before_kill = 0
    while True:
        with trainable.session() as s:
            job = get_job(s, job_id)
            seen_before_kill = max(seen_before_kill, job.progress.get("step", 0))
        complete = (
            [p for p in checkpoints.glob("step-*") if (p / "COMPLETE").exists()]
            if checkpoints.exists()
            else []
        )
        if complete and seen_before_kill >= 30:
            break
        assert job.status in ("queued", "running") and time.monotonic() < deadline, (
            job.error or workers.dump()
        )
        time.sleep(0.2)
    workers.kill(first)
    workers.start(env, "--queues", "cpu,gpu")
    deadline = time.monotonic() + 200
    while True:
        with trainable.session() as s:
            job = get_job(s, job_id)
        if job.status not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, workers.dump()
        time.sleep(0.5)
    assert job.status == "succeeded", (job.error or "") + workers.dump()
    assert job.attempts == 2
    resumed = job.result["resumed_from"]
    assert resumed is not None and 25 <= resumed and resumed % 25 == 0, job.result
    assert job.result["steps"] == 1200
    with trainable.session() as s:
        assert [a.name for a in list_adapters(s)] == ["faults-resume"]
    assert "resum" in open(job.log_path, encoding="utf-8").read().lower()
