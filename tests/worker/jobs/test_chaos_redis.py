"""Items 2 (with AOF) and 12 of issue 14 against real redis-servers and real `ft worker` processes:
jobs queued on a Redis with `appendonly yes` survive a SIGKILL of Redis and run exactly once with
no re-send; a Redis that demands a password works with the password in FT_BROKER_URL, refuses a
worker without it in one line, and the password shows in no output or log; a pickled message sent
with kombu is refused and its payload (it would create a file) never runs."""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest

from catalog.jobs import list_jobs
from catalog.settings import Settings
from tests.conftest import free_port
from tests.worker.jobs.test_lost_messages import start_redis
from tests.worker.jobs.test_queue_integration import SUBMIT, home  # noqa: F401  # the fixture
from tests.worker.procs import Workers, run_ft, subprocess_env
from worker.jobs.celery_app import make_celery
from worker.jobs.inflight import jobs_in_flight
from worker.jobs.messages import TASK_NAME

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(300)]

N = 4
GRACE = 5
PASSWORD = "s3cret-Pa55word-for-ft"


def wait_all_finished(catalog, ids: list[int], workers: Workers, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with catalog.session() as s:
            jobs = {j.id: j for j in list_jobs(s)}
        if all(jobs[i].status not in ("queued", "running") for i in ids):
            return jobs
        assert time.monotonic() < deadline, workers.dump()
        time.sleep(0.5)


def test_jobs_queued_on_a_redis_with_aof_survive_its_kill_with_no_resend(home, workers, tmp_path):  # noqa: F811
    port = free_port()
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis = start_redis(port, tmp_path, *aof)
    url = f"redis://127.0.0.1:{port}/0"
    env = subprocess_env(FT_BROKER_URL=url, FT_RESEND_GRACE_SECONDS=str(GRACE))
    try:
        ids = []
        for n in range(N):
            submitted = run_ft(env, *SUBMIT, "--max-len", str(192 + 16 * n))
            assert submitted.returncode == 0, submitted.stderr
            ids.append(int(submitted.stdout))
        last_submit = time.monotonic()
        redis.send_signal(signal.SIGKILL)
        redis.wait(timeout=30)
        redis = start_redis(port, tmp_path, *aof)  # replays its append-only file
        assert jobs_in_flight(url, recent=0) == set(ids)  # every message came back from the AOF
        # Every job is now older than the grace, so the reconciler's first pass looks at all of them.
        time.sleep(max(0.0, GRACE + 1 - (time.monotonic() - last_submit)))

        worker = workers.start(env)
        jobs = wait_all_finished(home, ids, workers)
        assert [(jobs[i].status, jobs[i].attempts) for i in ids] == [("succeeded", 1)] * N, workers.dump()
        log = worker.log.read_text()
        assert "re-sent" not in log and "no message in the broker" not in log  # nothing needed re-sending
        for i in ids:
            assert run_ft(env, "jobs", "logs", str(i)).stdout.count("attempt 1/3") == 1
    finally:
        redis.kill()
        redis.wait(timeout=30)


def test_redis_with_a_password_works_refuses_a_worker_without_it_and_never_shows_it(home, workers, tmp_path):  # noqa: F811
    port = free_port()
    redis = start_redis(port, tmp_path, "--appendonly", "no", "--requirepass", PASSWORD)
    env = subprocess_env(FT_BROKER_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    try:
        outputs = []
        for url in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong-{PASSWORD[::-1]}@127.0.0.1:{port}/0"):
            refused = run_ft(subprocess_env(FT_BROKER_URL=url), "worker", timeout=60)
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 1 and len(lines) == 1, refused.stderr
            assert (
                lines[0].startswith("Error: the broker at redis://")
                and "refused ft's credentials" in lines[0]
            )
            assert "FT_BROKER_URL" in lines[0] and PASSWORD[::-1] not in lines[0]
            outputs.append(refused.stdout + refused.stderr)

        worker = workers.start(env)
        done = run_ft(env, *SUBMIT, "--wait")
        assert done.returncode == 0, done.stderr + workers.dump()
        job_id = int(done.stdout.split()[1])
        outputs += [done.stdout, done.stderr, worker.log.read_text()]
        for args in (
            ("jobs", "logs", str(job_id)),
            ("jobs", "show", str(job_id), "--json"),
            ("workers", "list"),
        ):
            shown = run_ft(env, *args)
            assert shown.returncode == 0, shown.stderr
            outputs.append(shown.stdout + shown.stderr)
        assert workers.stop(worker) == 0
        outputs.append(worker.log.read_text())
        assert "redis://:***@127.0.0.1" in worker.log.read_text()  # the URL is shown, redacted
        leaks = [text for text in outputs if PASSWORD in text]
        assert leaks == []
    finally:
        redis.kill()
        redis.wait(timeout=30)


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears if anyone unpickles the message."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_message_is_refused_and_its_payload_never_runs(home, workers, redis_url, tmp_path):  # noqa: F811
    import redis

    url = f"{redis_url.rsplit('/', 1)[0]}/13"  # a database of its own
    redis.Redis.from_url(url).flushdb()
    env = subprocess_env(FT_BROKER_URL=url)
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(_Payload(str(marker))))  # the payload is live: unpickling runs it
    assert marker.exists()
    marker.unlink()

    app = make_celery(Settings.from_env({**os.environ, **env}))
    queue = app.amqp.queues["cpu"]
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            (
                (_Payload(str(marker)),),
                {},
                {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
            ),
            exchange=queue.exchange,
            routing_key="cpu",
            declare=[queue],
            serializer="pickle",
            headers={
                "lang": "py",
                "task": TASK_NAME,
                "id": "pickled-1",
                "retries": 0,
                "root_id": "pickled-1",
            },
        )
    assert redis.Redis.from_url(url).llen("cpu") == 1  # waiting ahead of the next job

    worker = workers.start(env)
    done = run_ft(env, *SUBMIT, "--wait")  # the worker goes on past the refused message
    assert done.returncode == 0, done.stderr + workers.dump()
    assert not marker.exists()
    log = worker.log.read_text()
    assert "Refusing to deserialize untrusted content of type pickle" in log, log
    assert redis.Redis.from_url(url).llen("cpu") == 0  # dropped, not re-delivered forever
