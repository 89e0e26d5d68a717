"""Where a training step of ft's own path spends its time: torch.profiler over a few optimizer steps of
`run_training` (after warm-up), the top operators by CUDA and by CPU time, and the share of the step the
GPU is busy. Reuses bench/train_throughput.py's shapes and tokenised rows.

    python bench/profile_train_step.py --rows .carry/rows --shape smollm2-135m --data faults --out
    bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> Path:
    import torch
    import train_throughput as tt
    from torch.profiler import ProfilerActivity, profile

    from worker.methods import get_method
    from worker.train.config import TrainConfig
    from worker.train.engine import TrainHooks, TrainPaths
    from worker.train.recipe import run_training

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=ROOT / ".carry" / "rows")
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(tt.SHAPES))
    ap.add_argument("--data", default="faults")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-tokens-per-batch", type=int, default=16384)
    ap.add_argument("--no-fused-kernels", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "bench" / "results")))
    args = ap.parse_args(argv)
    model_dir = tt.build_model_dir(args.shape, Path(tempfile.gettempdir()) / "ft-bench-models" / args.shape)
    rows = tt.load_rows(args.rows / f"{args.data}.json", 512)
    tt.save_pad_tokenizer(model_dir, rows["pad_id"])
    method = get_method("lora")
    cfg = TrainConfig(
        max_steps=args.warmup + args.steps, lr=2e-4, save_steps=100_000, logging_steps=100_000,
        max_tokens_per_batch=args.max_tokens_per_batch, fused_kernels=not args.no_fused_kernels,
    ).with_method_defaults(method)  # fmt: skip
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=False)
    state: dict[str, Any] = {"step": 0}

    def on_progress(progress: dict[str, Any]) -> None:
        state["step"] = progress["step"]
        if progress["step"] == args.warmup:
            torch.cuda.synchronize()
            prof.start()
        if progress["step"] == args.warmup + args.steps:
            torch.cuda.synchronize()
            prof.stop()

    run_training(
        model_dir, {"input_ids": rows["input_ids"], "labels": rows["labels"]}, method,
        method.make_config(tt.LORA), cfg, TrainPaths(Path(tempfile.mkdtemp()) / "ckpt"),
        TrainHooks(on_progress=on_progress), device="cuda",
    )  # fmt: skip
    events = prof.key_averages()
    total_cpu = sum(e.self_cpu_time_total for e in events)
    total_cuda = sum(getattr(e, "self_device_time_total", 0) for e in events)
    top = lambda key: [  # noqa: E731
        {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
         "self_cuda_ms": round(getattr(e, "self_device_time_total", 0) / 1e3, 2)}
        for e in sorted(events, key=key, reverse=True)[:20]
    ]  # fmt: skip
    record = {
        "command": " ".join(["python", "bench/profile_train_step.py", *(sys.argv[1:] if argv is None else
        argv)]),
        "commit": os.environ.get("FT_COMMIT") or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "device": torch.cuda.get_device_name(0), "settings": vars(args) | {"rows": str(args.rows), "out":
        str(args.out)},
        "steps_profiled": args.steps, "self_cpu_ms_per_step": round(total_cpu / 1e3 / args.steps, 1),
        "self_cuda_ms_per_step": round(total_cuda / 1e3 / args.steps, 1),
        "top_by_cuda": top(lambda e: getattr(e, "self_device_time_total", 0)),
        "top_by_cpu": top(lambda e: e.self_cpu_time_total),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile-train-step-{args.shape}-{args.data}-{record['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("self_cpu_ms_per_step", "self_cuda_ms_per_step")}))
    for row in record["top_by_cuda"][:10] + record["top_by_cpu"][:10]:
        print(row)
    return path


if __name__ == "__main__":
    main()
