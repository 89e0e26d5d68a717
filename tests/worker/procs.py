"""Real `ft worker` subprocesses for integration tests: start, wait until ready, stop (SIGTERM, then
SIGKILL of the whole process group) however the test ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FT = [sys.executable, "-m", "cli.main"]
READY_TIMEOUT_S = 60


class Workers:
    """Starts `ft worker` subprocesses (each in its own process group) and always cleans them up."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen:
        log = self.logs / f"worker-{len(self.procs) + 1}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*FT, "worker", *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"ft worker did not start (exit {proc.poll()}):\n{log.read_text(errors='replace')}"
                )
            time.sleep(0.1)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 30) -> int:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        self._kill_group(proc)  # pool children that outlived their parent
        return proc.returncode

    def kill(self, proc: subprocess.Popen) -> None:
        self._kill_group(proc)
        proc.wait(timeout=30)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def dump(self) -> str:
        """Every worker's output, for failure messages."""
        return "\n".join(f"--- {p.log.name}\n{p.log.read_text(errors='replace')}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc, timeout=10)


def run_ft(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*FT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}  # FT_HOME/FT_USER are set by ft_env
