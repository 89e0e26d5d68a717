"""One training process of a `--gpus N` job (`python -m worker.jobs.rank JOB STAGED RUN`, started by
torchrun from worker.jobs.launch): join the process group, rebuild the job's context from the catalog
(the settings come through the environment), train this rank's share; rank 0 writes the progress, the
artifact into STAGED and RUN/result.json."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from worker.jobs.handlers import JobContext
from worker.jobs.launch import write_json
from worker.jobs.logs import FORMAT


def rank_main(job_id: int, staged: Path, run_dir: Path) -> None:
    from catalog.db import Catalog
    from catalog.models import Job
    from catalog.settings import Settings
    from catalog.store import ArtifactStore
    from worker.jobs.train import artifact_card, prepare, train_prepared
    from worker.methods.saving import save_artifact
    from worker.train.distributed import Ranks
    from worker.train.sharding import full_state, is_sharded

    ranks = Ranks.from_env()
    logging.basicConfig(
        level=logging.INFO if ranks.main else logging.WARNING,
        format=FORMAT.replace("%(message)s", f"rank {ranks.rank}: %(message)s"),
        stream=sys.stderr,
    )
    log = logging.getLogger(f"ft.job.{job_id}.rank{ranks.rank}")
    settings = Settings.from_env()
    catalog = Catalog(settings)
    try:
        with catalog.session() as s:
            job = s.get_one(Job, job_id)
            s.expunge(job)

        def report(progress: dict[str, Any]) -> None:
            if ranks.main:
                write_json(run_dir / "progress.json", progress)

        ctx = JobContext(
            catalog, ArtifactStore(settings.artifacts), settings, job, log, report, lambda: False
        )
        prep = prepare(ctx)
        model, result, counts = train_prepared(ctx, prep)
        # a sharded (FSDP) model's weights are gathered by every rank; rank 0 writes them
        weights = full_state(model, None)[0] if is_sharded(model) else None
        if ranks.main:
            report({"stage": "save", "step": result.steps, "total": result.total_steps})
            card = artifact_card(ctx, prep, result, counts)
            save_artifact(
                model, prep.spec.method, staged, tokenizer=prep.tokenizer, card=card, state_dict=weights
            )
            out = {"result": dataclasses.asdict(result), "counts": dataclasses.asdict(counts)}
            write_json(run_dir / "result.json", out)
        ranks.barrier()
    finally:
        ranks.close()
        catalog.dispose()


if __name__ == "__main__":
    rank_main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
