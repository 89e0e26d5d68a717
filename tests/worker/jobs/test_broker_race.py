"""A worker starting while `ft submit` sends its first message, on a new embedded SQLite broker: both
create the queue's row at once (kombu guards it with a lock of one process only). Real processes,
released together, each declare the queue and send; every one succeeds and every message arrives."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tests.worker.procs import subprocess_env

pytestmark = pytest.mark.timeout(120)

SENDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from catalog.settings import Settings
    from worker.jobs.celery_app import make_celery
    from worker.jobs.messages import {how}, send_job

    go = Path(sys.argv[1])
    app = make_celery(Settings.from_env())
    while not go.exists():
        time.sleep(0.001)
    {call}
    send_job(app, int(sys.argv[2]), queue="gpu", priority=0)
    """
)


def run_senders(tmp_path, how: str, call: str, n: int = 8) -> list[subprocess.CompletedProcess[str]]:
    env = {**subprocess_env(), "FT_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    go = tmp_path / "go"
    code = SENDER.format(how=how, call=call)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go), str(i)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for i in range(n)
    ]
    time.sleep(3)  # every process imported Celery and is waiting for the same instant
    go.touch()
    for p in procs:
        p.wait(timeout=90)
    return [
        subprocess.CompletedProcess(p.args, p.returncode, p.stdout.read(), p.stderr.read()) for p in procs
    ]


def test_processes_declaring_a_new_queue_at_once_all_send(tmp_path):
    done = run_senders(tmp_path, "declare_queues", 'declare_queues(app, ["gpu"])')

    assert [d.returncode for d in done] == [0] * len(done), [d.stderr[-800:] for d in done if d.returncode]
    with sqlite3.connect(tmp_path / "home" / "broker.db") as db:
        queues = db.execute("SELECT name FROM kombu_queue").fetchall()
        messages = db.execute("SELECT count(*) FROM kombu_message").fetchone()[0]
    assert queues == [("gpu",)]
    assert messages == len(done)
