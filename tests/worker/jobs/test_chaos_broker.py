"""Item 8 of issue 14 (the broker part): kombu's SQL transport only marks a delivered message
invisible and keeps its row forever; ft deletes the consumed rows (the reconciler, every pass), so
the embedded SQLite broker does not grow by a row per job. Real kombu, a real `ft worker`."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.worker.jobs.test_queue_integration import SUBMIT, home  # noqa: F401  # the fixture
from tests.worker.procs import run_ft, subprocess_env
from worker.jobs.celery_app import make_celery
from worker.jobs.inflight import jobs_in_flight
from worker.jobs.messages import purge_consumed, send_job

pytestmark = [pytest.mark.services, pytest.mark.timeout(240)]


def broker_rows(settings) -> list[tuple[int, int]]:
    """(id, visible) of every row of kombu_message."""
    path = settings.broker_url.split(":///", 1)[1]
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, visible FROM kombu_message ORDER BY id").fetchall()


def test_purge_deletes_the_consumed_messages_and_keeps_the_waiting_ones(settings, catalog):
    app = make_celery(settings)
    send_job(app, 101, queue="cpu", priority=0)
    send_job(app, 102, queue="cpu", priority=0)
    with app.connection_for_write() as conn:
        consumed = conn.SimpleQueue("cpu").get(timeout=10)  # as a worker takes one
        consumed.ack()
    assert [visible for _, visible in broker_rows(settings)] == [0, 1]  # kombu keeps the taken row

    assert purge_consumed(settings.broker_url) == 1
    assert [visible for _, visible in broker_rows(settings)] == [1]
    assert jobs_in_flight(settings.broker_url, recent=60) == {102}  # the waiting message is untouched
    assert purge_consumed(settings.broker_url) == 0
    assert purge_consumed("redis://127.0.0.1:1/0") == 0  # Redis deletes its own; nothing is asked of it


def test_a_worker_leaves_no_consumed_messages_behind(home, settings, workers):  # noqa: F811
    env = subprocess_env(FT_LEASE_SECONDS="2")  # the reconciler passes every 2 s
    workers.start(env)
    for n in range(3):
        done = run_ft(env, *SUBMIT, "--max-len", str(192 + 16 * n), "--wait")
        assert done.returncode == 0, done.stderr + workers.dump()
    deadline = time.monotonic() + 60
    while (rows := broker_rows(settings)) != []:
        assert all(visible == 0 for _, visible in rows), rows  # nothing is left waiting either
        assert time.monotonic() < deadline, f"{rows}\n{workers.dump()}"
        time.sleep(0.2)
