"""Where a decoding step's time goes: ft's batched generation with the dynamic KV cache against the static
cache (which transformers compiles with CUDA graphs on a GPU), in one process, plus a profile of one
eager decoding step.

Why: on the H100 a decoding step of SmolLM2-135M took 38 ms in fp32 and 91 ms in bf16 (batch 16,
bench/results/generation-*.json). This profile found cuDNN attention re-planning on every step (now
left out: worker/models/attention.py). `--end-to-end N` also times a whole evaluation's generation (every
prompt of --data, batches of 16) each way, the static cache's compiles included.

    python bench/bench_decode_step.py --model DIR --data ../shared/data/fault_triples_test.jsonl \\
        --limit 16 --max-new-tokens 128 --dtype bf16 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import DTYPES, device_name, load_model, load_prompts  # noqa: E402

from worker.evaluation.generation import GenerationConfig, generate  # noqa: E402
from worker.models.attention import without_cudnn_attention  # noqa: E402


def timed_generate(model: Any, tok: Any, prompts: list[str], cfg: GenerationConfig, device: str) -> dict:
    """Two calls (the first warms up and, for the static cache on CUDA, compiles); the second timed."""
    t0 = time.perf_counter()
    generate(model, tok, prompts, cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = generate(model, tok, prompts, cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    steps = max(1, cfg.max_new_tokens)
    return {
        "first_call_s": round(first, 3), "seconds": round(seconds, 3), "new_tokens": result.new_tokens,
        "tokens_per_s": round(result.new_tokens / seconds, 1),
        "ms_per_step_at_most": round(1000 * seconds / steps, 2), "texts": result.texts,
    }  # fmt: skip


def profile_step(model: Any, tok: Any, prompts: list[str], device: str, top: int = 25) -> dict[str, Any]:
    """One eager decoding step after a left-padded prefill: op counts and the most expensive ops."""
    from torch.profiler import ProfilerActivity, profile

    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    with torch.inference_mode():
        out = model(**enc, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(nxt)], 1)
        step = {"input_ids": nxt, "attention_mask": mask, "past_key_values": out.past_key_values}
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=activities) as prof, without_cudnn_attention():
            model(**step, use_cache=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=top)
    return {
        "aten_ops": sum(e.count for e in events if e.key.startswith("aten::")),
        "self_cpu_ms": round(sum(e.self_cpu_time_total for e in events) / 1000, 2),
        "table": table.splitlines(),
    }


def end_to_end(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    """An evaluation's whole generation, once each way: dynamic, then static (its compiles included)."""
    prompts = load_prompts(args.data, args.template, tok, None)
    out: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": args.end_to_end, "batch_size": 16}
    for name, static in (("dynamic_cache", False), ("static_cache", True)):
        cfg = GenerationConfig(
            max_new_tokens=args.end_to_end, batch_size=16, static_cache=static, stop_on_repeated_line=True
        )
        result = generate(model, tok, prompts, cfg)
        out[name] = {"seconds": round(result.seconds, 2), "new_tokens": result.new_tokens}
        out[name]["texts"] = result.texts
        print("end to end", name, out[name]["seconds"], "s", flush=True)
    pairs = zip(out["dynamic_cache"].pop("texts"), out["static_cache"].pop("texts"), strict=True)
    out["identical_fraction"] = sum(a == b for a, b in pairs) / len(prompts)
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--template", choices=["plain", "chat"], default="plain")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument(
        "--end-to-end", type=int, default=0, metavar="N",
        help="also: every prompt of --data, N new tokens, batches of 16, one call each (compiles included)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    model, tok, dtype = load_model(args)
    prompts = load_prompts(args.data, args.template, tok, args.limit)
    report: dict[str, Any] = {
        "device": device_name(args.device), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "dtype": str(dtype).removeprefix("torch."), "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
    }  # fmt: skip
    report["profile_eager_step"] = profile_step(model, tok, prompts, args.device)
    for name, static in (("dynamic_cache", False), ("static_cache", True)):
        cfg = GenerationConfig(
            max_new_tokens=args.max_new_tokens, batch_size=len(prompts), static_cache=static
        )
        report[name] = timed_generate(model, tok, prompts, cfg, args.device)
        print(name, {k: v for k, v in report[name].items() if k != "texts"}, flush=True)
    dynamic, static = report["dynamic_cache"], report["static_cache"]
    report["speedup_static"] = round(dynamic["seconds"] / max(static["seconds"], 1e-9), 2)
    report["identical_texts"] = dynamic.pop("texts") == static.pop("texts")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"decode-step-{report['dtype']}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.end_to_end:
        report["end_to_end"] = end_to_end(model, tok, args)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"static cache {report['speedup_static']}x, identical {report['identical_texts']}; wrote {path}")
    return path


if __name__ == "__main__":
    main()
