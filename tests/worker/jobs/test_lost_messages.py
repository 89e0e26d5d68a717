"""Item 2 of issue 14 with real processes: jobs queued on a Redis without persistence, Redis SIGKILLed
and restarted empty on the same port, then a worker: the reconciler re-sends every lost message and
each job runs exactly once."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

import pytest

from catalog.jobs import list_jobs
from tests.conftest import free_port
from tests.worker.jobs.test_queue_integration import SUBMIT, home  # noqa: F401  # the fixture
from tests.worker.procs import Workers, run_ft, subprocess_env

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(300)]

N = 4


def start_redis(port: int, workdir, *extra: str) -> subprocess.Popen:
    exe = shutil.which("redis-server") or pytest.skip("redis-server not available")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def test_jobs_queued_on_a_redis_that_lost_them_all_run_exactly_once(home, workers: Workers, tmp_path):  # noqa: F811
    port = free_port()
    redis = start_redis(port, tmp_path, "--appendonly", "no")
    env = subprocess_env(
        FT_BROKER_URL=f"redis://127.0.0.1:{port}/0", FT_LEASE_SECONDS="3", FT_RESEND_GRACE_SECONDS="1"
    )
    try:
        ids = []
        for n in range(N):
            submitted = run_ft(env, *SUBMIT, "--max-len", str(192 + 16 * n))
            assert submitted.returncode == 0, submitted.stderr
            ids.append(int(submitted.stdout))
        redis.send_signal(signal.SIGKILL)
        redis.wait(timeout=30)
        redis = start_redis(port, tmp_path, "--appendonly", "no")  # empty: every message is gone

        worker = workers.start(env)
        deadline = time.monotonic() + 240
        while True:
            with home.session() as s:
                jobs = {j.id: j for j in list_jobs(s)}
            if all(jobs[i].status not in ("queued", "running") for i in ids):
                break
            assert time.monotonic() < deadline, workers.dump()
            time.sleep(0.5)
        assert [(jobs[i].status, jobs[i].attempts) for i in ids] == [("succeeded", 1)] * N, workers.dump()
        assert len({jobs[i].result["conversion_id"] for i in ids}) == N
        log = worker.log.read_text()
        for i in ids:
            assert f"job {i}: queued for 1s with no message in the broker; re-sent" in log
            assert run_ft(env, "jobs", "logs", str(i)).stdout.count("attempt 1/3") == 1
    finally:
        redis.kill()
        redis.wait(timeout=30)
