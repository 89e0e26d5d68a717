"""Where a decoding step of the graph loop spends its GPU time: the kernels of one step, by name.

Runs worker/evaluation/graph_decoding.py's loop eagerly (no CUDA graph, so the profiler sees every
kernel) on the same prompts as bench/bench_fast_decoding.py, twice under torch.profiler: SHORT and
LONG new tokens. Both runs share the prefill, so (LONG - SHORT) / (LONG - SHORT steps) is one decoding
step's kernels: their count, the GPU time of each kind, and the whole step's GPU time. It then times
the captured loop the same way (the wall clock of LONG - SHORT steps) to set the step's GPU time beside
what a replay costs. Each shape runs four ways: with and without Liger's kernels, each with and without
the buckets of rows (worker/evaluation/bucketed_attention.py). JSON to --out.

    python bench/profile_decode_step.py --tokenizer .carry/tok --shapes smollm2-135m,qwen2.5-1.5b --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_fast_decoding import build  # noqa: E402
from bench_generation import load_prompts  # noqa: E402

from worker.evaluation.graph_decoding import GraphDecoder, TokenPicker  # noqa: E402
from worker.evaluation.hf_decoding import cache_kwarg  # noqa: E402

SHORT, LONG = 8, 40


def decoder(model, new: int, graphs: bool) -> GraphDecoder:
    return GraphDecoder(model, max_new_tokens=new, eos=[], pad_id=0, picker=TokenPicker(False, 1.0, 1.0),
                        graphs=graphs, cache_kwarg=cache_kwarg(model))  # fmt: skip


def kernels(model, ids, mask, new: int) -> dict[str, tuple[int, float]]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.inference_mode():
        decoder(model, new, graphs=False).run(ids, mask)
        torch.cuda.synchronize()
    out: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name][0] += 1
            out[e.name][1] += e.device_time / 1000.0  # ms
    return {k: (n, t) for k, (n, t) in out.items()}


def wall(model, ids, mask, new: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        decoder(model, new, graphs=True).run(ids, mask)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def profile_shape(shape: str, tok, prompts: list[str], fused: bool) -> list[dict]:
    """The step with and without buckets of rows (worker/evaluation/bucketed_attention.py)."""
    from worker.evaluation.bucketed_attention import bucket_cost

    model = build(shape, "cuda")
    note = None
    if fused:
        from worker.train.kernels import apply_fused_kernels

        note = apply_fused_kernels(model, loss=False)
    # as the loop gets them from generate: longest first, left-padded (until 4ea91a5 they went in
    # right-padded, so every row "started" at slot 0 and the buckets compared were one bucket)
    prompts = sorted(prompts, key=lambda p: -len(tok(p)["input_ids"]))
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to("cuda")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    results = []
    for buckets in (False, True):
        with nullcontext() if buckets else bucket_cost(1 << 62):
            results.append(
                profile_step(model, ids, mask, {"shape": shape, "fused": note, "buckets": buckets})
            )
    del model
    torch.cuda.empty_cache()
    return results


def profile_step(model, ids: torch.Tensor, mask: torch.Tensor, labels: dict) -> dict:
    kernels(model, ids, mask, SHORT)  # warm-up
    short, long = kernels(model, ids, mask, SHORT), kernels(model, ids, mask, LONG)
    steps = LONG - SHORT
    per_step = {}
    for name, (n, t) in long.items():
        n0, t0 = short.get(name, (0, 0.0))
        if n - n0 > 0:
            per_step[name] = {"count": round((n - n0) / steps, 1), "ms": round((t - t0) / steps, 4)}
    top = dict(sorted(per_step.items(), key=lambda kv: -kv[1]["ms"])[:30])
    wall(model, ids, mask, LONG)  # warm-up of the captured loop
    replay_ms = (
        (
            min(wall(model, ids, mask, 264) for _ in range(2))
            - min(wall(model, ids, mask, SHORT) for _ in range(2))
        )
        / (264 - SHORT)
        * 1000
    )
    result = {
        **labels,
        "rows": ids.shape[0],
        "padded_prompt_len": ids.shape[1],
        "kernels_per_step": round(sum(v["count"] for v in per_step.values()), 1),
        "gpu_ms_per_step": round(sum(v["ms"] for v in per_step.values()), 3),
        "captured_wall_ms_per_step": round(replay_ms, 3),
        "top_kernels": top,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "top_kernels"}), flush=True)
    for name, v in list(top.items())[:15]:
        print(f"  {v['ms']:.4f} ms  x{v['count']:<6} {name[:110]}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, type=Path)
    p.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "fault_triples_test.jsonl")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--shapes", default="smollm2-135m,qwen2.5-1.5b")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    prompts = load_prompts(args.data, "plain", tok, args.limit)
    results = [
        step
        for s in args.shapes.split(",")
        for fused in (False, True)
        for step in profile_shape(s, tok, prompts, fused)
    ]
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "commit": os.environ.get("FT_COMMIT"),
        "command": " ".join(sys.argv),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = (
        args.out
        / f"profile-decode-step-{report['device'].replace(' ', '_')}-{(report['commit'] or 'nogit')[:7]}.json"
    )
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
