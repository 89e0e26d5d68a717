"""A team on several hosts: real PostgreSQL and Redis, two `ft worker` processes with different
declared GPUs (FT_FAKE_GPUS; each its own FT_HOME, as on its own host) and one shared FT_ARTIFACTS,
and jobs submitted from a third FT_HOME by two users through `ft submit train`:

- `--gpu-class a10-24gb` runs only on the host that has one; `--gpus 2` claims two GPUs of the other
  together;
- FT_MAX_GPUS_PER_USER=3: while alice holds three GPUs her next job waits, and `ft jobs list` says
  why; bob's job runs meanwhile on the GPU left free;
- a class no worker has is warned about at submit; cancelling alice's jobs frees her GPUs and her
  waiting job starts; every job that finishes ran exactly once and registered one adapter.

The fake GPUs stand in for real ones in scheduling only (the training itself runs on this CPU)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from catalog.adapters import list_adapters
from catalog.db import Catalog
from catalog.jobs import get_job
from catalog.pool_view import list_workers
from catalog.settings import Settings
from tests.conftest import FAULTS_TRAIN, free_port
from tests.worker.jobs.test_lost_messages import start_redis
from tests.worker.procs import Workers, run_ft, subprocess_env

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN = ["submit", "train", "--method", "lora", "--rank", "4", "-m", "tiny", "-d", "faults", "-t", "plain",
         "--batch-size", "1", "--grad-accum", "1", "--max-len", "192", "--max-source-len", "128",
         "--save-steps", "1000", "--json"]  # fmt: skip
CAP = 3
FOREVER = ("--epochs", "1000", "--max-steps", "100000")
"""Jobs that hold their GPUs until cancelled (hours of steps), so nothing here depends on timing."""


def submit(env: dict[str, str], user: str, name: str, *flags: str) -> tuple[int, str]:
    done = run_ft({**env, "FT_USER": user}, *TRAIN, "--name", name, *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"], done.stderr


def job(catalog: Catalog, job_id: int):
    with catalog.session() as s:
        return get_job(s, job_id)


def gpus_of(catalog: Catalog, job_id: int) -> list[tuple[str, int]]:
    with catalog.session() as s:
        return [(v.name, g.index) for v in list_workers(s) for g in v.gpus if g.job_id == job_id]


def until(catalog: Catalog, job_id: int, workers: Workers, done, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not done(row := job(catalog, job_id)):
        assert row.status in ("queued", "running"), (
            f"job {job_id} {row.status}: {row.error}\n{workers.dump()}"
        )
        assert time.monotonic() < deadline, f"{what}\n{workers.dump()}"
        time.sleep(0.2)
    return row


def test_routing_gangs_and_the_per_user_cap_across_two_hosts(postgres_url, tiny_model_dir, tmp_path, workers):
    port = free_port()
    redis = start_redis(port, tmp_path, "--appendonly", "no")
    shared = {
        "FT_DATABASE_URL": postgres_url,
        "FT_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "FT_ARTIFACTS": str(tmp_path / "artifacts"),
        "FT_MAX_GPUS_PER_USER": str(CAP),
    }
    host_a = subprocess_env(**shared, FT_HOME=str(tmp_path / "a"), FT_FAKE_GPUS="3x80GiB@H100")
    host_b = subprocess_env(**shared, FT_HOME=str(tmp_path / "b"), FT_FAKE_GPUS="24GiB@A10")
    desk = subprocess_env(**shared, FT_HOME=str(tmp_path / "desk"))
    desk.pop("FT_FAKE_GPUS", None)
    try:
        rows = tmp_path / "faults24.jsonl"
        rows.write_text(
            "".join(FAULTS_TRAIN.read_text(encoding="utf-8").splitlines(True)[:24]), encoding="utf-8"
        )
        for args in (("init",), ("datasets", "add", "faults", str(rows), "--format", "triples"),
                     ("models", "add", "tiny", "--path", str(tiny_model_dir))):  # fmt: skip
            done = run_ft(desk, *args)
            assert done.returncode == 0, done.stderr
        workers.start(host_a, "--name", "ft@host-a", "--queues", "gpu", "--gpus", "all")
        workers.start(host_b, "--name", "host-b", "--queues", "gpu", "--gpus", "all")
        catalog = Catalog(Settings.from_env(desk))

        gang, _ = submit(desk, "alice", "alice-gang", "--gpus", "2", *FOREVER)
        until(catalog, gang, workers, lambda j: len(gpus_of(catalog, gang)) == 2, "the gang to hold 2 GPUs")
        assert {name for name, _ in gpus_of(catalog, gang)} == {"ft@host-a"}
        a10, _ = submit(desk, "alice", "alice-a10", "--gpu-class", "a10-24gb", *FOREVER)
        until(catalog, a10, workers, lambda j: j.status == "running" and gpus_of(catalog, a10), "the a10 job")
        assert gpus_of(catalog, a10) == [
            (f"host-b@{socket.gethostname()}", 0)
        ]  # a name without @ gets the host

        capped, _ = submit(desk, "alice", "alice-third", "--max-steps", "3")
        waiting = until(
            catalog, capped, workers, lambda j: "FT_MAX_GPUS_PER_USER" in (j.progress or {}).get("why", ""),
            "alice's third job to wait for her cap",
        )  # fmt: skip
        assert waiting.status == "queued" and f"alice holds {CAP} GPU(s)" in waiting.progress["why"]
        listed = run_ft(desk, "jobs", "list")
        assert f"FT_MAX_GPUS_PER_USER is {CAP}" in listed.stdout, listed.stdout

        bob, _ = submit(desk, "bob", "bob-one", "--max-steps", "3")
        bobs = until(catalog, bob, workers, lambda j: j.status == "succeeded", "bob's job", timeout=240)
        assert job(catalog, gang).status == "running"  # bob ran beside alice's gang, on the GPU left
        assert "@host-a:" in run_ft(desk, "jobs", "logs", str(bob)).stdout
        assert bobs.attempts == 1

        nowhere, warned = submit(desk, "bob", "bob-l40s", "--gpu-class", "l40s-48gb", "--max-steps", "3")
        assert "no running worker on queue 'gpu' has 1 GPU of class l40s-48gb" in warned
        assert run_ft(desk, "jobs", "cancel", str(nowhere)).returncode == 0

        for held in (gang, a10):  # alice's GPUs come free: her waiting job starts
            assert run_ft(desk, "jobs", "cancel", str(held)).returncode == 0
        third = until(catalog, capped, workers, lambda j: j.status == "succeeded", "alice's third job")
        assert third.attempts == 1
        for held in (gang, a10):
            ended = until(catalog, held, workers, lambda j: j.status == "cancelled", f"job {held} to stop")
            assert third.started_at >= ended.finished_at or job(catalog, held).status == "cancelled"
        assert f"on host-b@{socket.gethostname()}:" in run_ft(desk, "jobs", "logs", str(a10)).stdout
        with catalog.session() as s:
            adapters = sorted(a.name for a in list_adapters(s))
        assert adapters == ["alice-third", "bob-one"]  # each finished job registered one adapter, once
        assert job(catalog, nowhere).status == "cancelled"
        catalog.dispose()
    finally:
        redis.kill()
        redis.wait(timeout=30)
