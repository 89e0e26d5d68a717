"""Job handlers: what a worker runs for each job kind, and the contract between them and the runner.

A handler is an ordinary function `handler(ctx: JobContext) -> Finish`:

- it reads its typed spec from `ctx.job.spec` (the dataclass serialised at submission);
- it does the long work outside any database transaction, calling `ctx.report({...})` with its
  latest progress (e.g. `{"stage": "train", "step": 10, "total": 100, "loss": 1.3}`) and checking
  `ctx.cancelled()` between steps (or calling `ctx.raise_if_cancelled()`, which raises `JobCancelled`);
- it writes artifacts through the store (staged, hashed, renamed: complete or absent);
- it returns a `Finish`: a callable `finish(session) -> dict` that registers what it made (the
  conversion / adapter / evaluation row) in the given session and returns the job's `result`
  dict (e.g. `{"conversion_id": 3}`). The runner calls it inside the transaction that marks the job
  `succeeded`, so the row and the status commit together, and only if this worker still holds
  the lease;
- it raises an `FtError` for anything a user caused (the job fails with that message); any other
  exception is a bug (the job fails with a one-line summary; the traceback goes to the job log).

Long handlers (training) resume: a re-delivered job has the same spec and `ctx.job.attempts > 1`;
keep checkpoints under `ctx.workdir` (the same directory for every attempt, on any worker; removed
when the job succeeds) and continue from the last complete one.

Handlers are registered by kind in a `HandlerRegistry`, which refuses duplicates. The default
registry `HANDLERS` imports the module of a built-in kind (see `BUILTIN_MODULES`) on first use, so
heavy imports (torch) happen in the worker child that runs the job, never in the worker's parent.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import InvalidInput
from catalog.models import Job
from catalog.settings import Settings
from catalog.store import ArtifactStore

Finish = Callable[[Session], dict[str, Any]]
"""Registers the job's output in the finishing session; returns the job's `result` dict."""

BUILTIN_MODULES: dict[str, str] = {
    "convert": "worker.jobs.convert",
    "train": "worker.jobs.train",
    "eval": "worker.jobs.eval",
}
"""Job kind -> the module whose import registers its handler in `HANDLERS`."""


class JobCancelled(Exception):
    """Raised by a handler (or `JobContext.raise_if_cancelled`) to stop because the job was
    cancelled, or because this worker lost its lease or is shutting down."""


@dataclass
class JobContext:
    """What a handler gets: the catalog, the store, the settings, the claimed job and a few hooks."""

    catalog: Catalog
    store: ArtifactStore
    settings: Settings
    job: Job
    """The job as claimed (detached): id, kind, spec, attempts (1 on the first run), submitted_by."""
    log: logging.Logger
    """Writes to the job's log file (`ft jobs logs N`)."""
    _report: Callable[[dict[str, Any]], None] = field(repr=False)
    _cancelled: Callable[[], bool] = field(repr=False)

    def report(self, progress: dict[str, Any]) -> None:
        """Record the latest progress (JSON-able); the heartbeat writes it to the job row."""
        self._report(dict(progress))

    def cancelled(self) -> bool:
        """True once the job should stop: cancel requested, lease lost, or worker stopping."""
        return self._cancelled()

    def raise_if_cancelled(self) -> None:
        if self._cancelled():
            raise JobCancelled(f"job {self.job.id} cancelled")

    @property
    def workdir(self) -> Path:
        """A directory that stays the same across attempts of this job, on whichever worker: keep
        checkpoints here. It lies in the artifact store's root (shared by a team's workers) and is
        removed once the job succeeds."""
        path = job_workdir(self.store, self.job.id)
        path.mkdir(parents=True, exist_ok=True)
        return path


def job_workdir(store: ArtifactStore, job_id: int) -> Path:
    return store.root / ".jobs" / str(job_id)


Handler = Callable[[JobContext], Finish]


class HandlerRegistry:
    """Job kind -> handler. Registering a kind twice is an error."""

    def __init__(self, modules: dict[str, str] | None = None):
        self._handlers: dict[str, Handler] = {}
        self._modules = dict(modules or {})

    def register(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator: `@HANDLERS.register("convert")`."""

        def add(handler: Handler) -> Handler:
            if kind in self._handlers:
                raise ValueError(f"a handler for job kind {kind!r} is already registered")
            self._handlers[kind] = handler
            return handler

        return add

    def get(self, kind: str) -> Handler:
        if kind not in self._handlers and kind in self._modules:
            importlib.import_module(self._modules[kind])
        try:
            return self._handlers[kind]
        except KeyError:
            raise InvalidInput(f"no handler for job kind {kind!r} in this ft version") from None

    def kinds(self) -> list[str]:
        return sorted(set(self._handlers) | set(self._modules))


HANDLERS = HandlerRegistry(BUILTIN_MODULES)
"""The default registry; built-in kinds register themselves here."""
