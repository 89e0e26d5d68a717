"""Decoding speed of ft's two engines in one process: transformers' `generate` (batch 16, the old
evaluation default, and 64, today's) against the graph loop (worker/evaluation/graph_decoding.py: a
static cache, each step one CUDA graph replay; on a GPU it batches as many rows as fit,
worker/evaluation/batches.py), with and without Liger's RMSNorm/RoPE/SwiGLU kernels, plus stacked
LoRA adapters through the graph loop. Ablations of the loop, each on request: without cuDNN attention
(--no-cudnn-baseline), without the buckets of rows (--no-buckets-baseline,
worker/evaluation/bucketed_attention.py), each step's buckets through SDPA instead of two matmuls
(--sdpa-step-baseline), the prefill in one padded forward instead of groups of rows
(--one-prefill-baseline, worker/evaluation/grouped_prefill.py), with the decoder layers compiled
(--compile).

Models are randomly initialised from the published configs (bench/train_throughput.py SHAPES, bf16);
speed does not depend on the weights. Every row decodes `--max-new-tokens` (EOS ignored), so both
engines do the same work. Prompts are the first `--limit` rows of `--data` (instruction + input),
tokenised by `--tokenizer` (any tokenizer: its ids fit every shape's vocabulary). Reports tokens/s,
seconds, peak memory, the speed-up of the graph loop over each baseline, the share of outputs identical
to `generate` at batch 64 (in bf16 a different kernel order may flip a near tie), and, for the adapters,
K stacked adapters' time over one adapter's. JSON to --out (bench/results/ by default).

    python bench/bench_fast_decoding.py --tokenizer .carry/tok --data tests/data/fault_triples_test.jsonl \\
        --shapes smollm2-135m,qwen2.5-1.5b --out $OUT
    python bench/bench_fast_decoding.py --tokenizer DIR --shapes tiny --limit 4 --max-new-tokens 8  # on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_generation import load_prompts  # noqa: E402
from bench_generation import summary as generation_summary  # noqa: E402
from train_throughput import SHAPES  # noqa: E402

from worker.evaluation.generation import GenerationConfig, GenerationResult, generate  # noqa: E402
from worker.evaluation.multi_lora import BASE, stacked_lora  # noqa: E402

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
            max_position_embeddings=2048)  # fmt: skip
"""A shape for checking the script on a CPU (tests/bench/)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, type=Path)
    p.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "fault_triples_test.jsonl")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument(
        "--shapes", default="smollm2-135m,qwen2.5-1.5b", help=f"comma-separated: {', '.join(SHAPES)}, tiny"
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument(
        "--adapters", type=int, default=4, help="stacked LoRA adapters on the first shape (0: none)"
    )
    p.add_argument("--skip-batch-16", action="store_true", help="leave out the slowest baseline")
    p.add_argument("--many", type=int, default=8, help="also decode the prompts this many times over")
    p.add_argument(
        "--no-fused-kernels",
        dest="fused_kernels",
        action="store_false",
        help="leave out the run with Liger's RMSNorm/RoPE/SwiGLU kernels (GPU only)",
    )
    p.add_argument(
        "--no-cudnn-baseline",
        action="store_true",
        help="also run the loop with cuDNN attention left out (as generate runs)",
    )
    p.add_argument(
        "--no-buckets-baseline",
        action="store_true",
        help="also run the loop attending every row over every cache slot (no buckets of rows)",
    )
    p.add_argument(
        "--sdpa-step-baseline",
        action="store_true",
        help="also run the loop with each step's buckets attended through SDPA (cuDNN), not two matmuls",
    )
    p.add_argument(
        "--one-prefill-baseline",
        action="store_true",
        help="also run the loop prefilling the padded batch in one forward (no groups of rows)",
    )
    p.add_argument(
        "--compile", action="store_true", help="also run with the decoder layers compiled (GPU only)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return p.parse_args(argv)


def build(shape: str, device: str) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TINY if shape == "tiny" else SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config.eos_token_id = config.bos_token_id = None
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.eos_token_id = None
    return model.eval()


def timed(model: Any, tok: Any, prompts: list[str], cfg: GenerationConfig, **kw: Any) -> GenerationResult:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return generate(model, tok, prompts, cfg, **kw)


def identical(a: GenerationResult, b: GenerationResult) -> float:
    """The share of prompts whose two texts are the same."""
    same = [x == y for x, y in zip(a.texts, b.texts, strict=True)]
    return round(sum(same) / max(len(same), 1), 3)


def summary(r: GenerationResult) -> dict[str, Any]:
    return {**generation_summary(r), "engine": r.engine, "phases": r.phases}


def bench_shape(
    shape: str, tok: Any, prompts: list[str], args: argparse.Namespace, device: str
) -> dict[str, Any]:
    model = build(shape, device)
    common = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    for engine in ("generate", "graph"):  # warm-up: kernels, cuBLAS handles, the allocator
        generate(model, tok, prompts[:2], GenerationConfig(engine=engine, max_new_tokens=8, ignore_eos=True))
    runs: dict[str, GenerationResult] = {}
    if not args.skip_batch_16:
        runs["generate_b16"] = timed(
            model, tok, prompts, GenerationConfig(engine="generate", batch_size=16, **common)
        )
    runs["generate_b64"] = timed(
        model, tok, prompts, GenerationConfig(engine="generate", batch_size=64, **common)
    )
    if args.no_cudnn_baseline:  # the loop as it was before it let cuDNN attention in
        from worker.evaluation import graph_decoding
        from worker.models.attention import WITHOUT_CUDNN

        allowed, graph_decoding.ATTENTION = graph_decoding.ATTENTION, WITHOUT_CUDNN
        cfg = GenerationConfig(engine="graph", batch_size=64, **common)
        generate(model, tok, prompts[:2], GenerationConfig(engine="graph", max_new_tokens=8, ignore_eos=True))
        runs["graph_no_cudnn"] = timed(model, tok, prompts, cfg)
        graph_decoding.ATTENTION = allowed
    if args.no_buckets_baseline:  # the step attending every row over every slot (one bucket)
        from worker.evaluation.bucketed_attention import bucket_cost

        with bucket_cost(1 << 62):
            cfg = GenerationConfig(engine="graph", batch_size=64, **common)
            runs["graph_no_buckets"] = timed(model, tok, prompts, cfg)
    if args.sdpa_step_baseline:  # each bucket through transformers' SDPA, as before the two matmuls
        from worker.evaluation.bucketed_attention import sdpa_steps

        with sdpa_steps():
            cfg = GenerationConfig(engine="graph", batch_size=64, **common)
            runs["graph_sdpa_step"] = timed(model, tok, prompts, cfg)
    if args.one_prefill_baseline:  # the padded batch's prefill in one forward
        from worker.evaluation import grouped_prefill

        cost, grouped_prefill.PREFILL_COST = grouped_prefill.PREFILL_COST, 1 << 62
        cfg = GenerationConfig(engine="graph", batch_size=64, **common)
        runs["graph_one_prefill"] = timed(model, tok, prompts, cfg)
        grouped_prefill.PREFILL_COST = cost
    runs["graph"] = timed(model, tok, prompts, GenerationConfig(engine="graph", batch_size=64, **common))
    if args.many > 1:  # the same prompts k times over: what batching as many rows as fit buys
        many = timed(
            model, tok, prompts * args.many, GenerationConfig(engine="graph", batch_size=64, **common)
        )
        print(
            f"{shape} graph x{args.many} rows: {many.tokens_per_s:,.0f} tok/s, {many.seconds:.2f} s",
            flush=True,
        )
    fused = None
    if args.fused_kernels and device == "cuda":
        from worker.train.kernels import apply_fused_kernels

        fused = apply_fused_kernels(model, loss=False)
        print(fused, flush=True)
        generate(model, tok, prompts[:2], GenerationConfig(engine="graph", max_new_tokens=8, ignore_eos=True))
        cfg = GenerationConfig(engine="graph", batch_size=64, **common)
        runs["graph_fused"] = timed(model, tok, prompts, cfg)
    stacked = None  # before the compile, which changes the model in place
    if args.adapters and shape == args.shapes.split(",")[0]:
        stacked = bench_adapters(model, tok, prompts, args, common)
    compiled = None
    if args.compile and device == "cuda":  # on top of the fused kernels when they were applied
        cfg = GenerationConfig(engine="graph", batch_size=64, compile_layers=True, **common)
        started = time.perf_counter()
        first = timed(model, tok, prompts, cfg)  # the compile happens here
        compiled = {"first_call_seconds": round(time.perf_counter() - started, 2), **summary(first)}
        print(f"{shape} compiled first call (compiles): {compiled['first_call_seconds']} s", flush=True)
        runs["graph_compiled"] = timed(model, tok, prompts, cfg)
        if args.many > 1:
            many_c = timed(model, tok, prompts * args.many, cfg)
            compiled["many_rows"] = {"copies": args.many, **summary(many_c)}
            print(f"{shape} compiled x{args.many} rows: {many_c.tokens_per_s:,.0f} tok/s", flush=True)
    for name, r in runs.items():
        print(f"{shape} {name}: {r.tokens_per_s:,.0f} tok/s, {r.seconds:.2f} s {r.phases or ''}", flush=True)
    graph = runs["graph"]
    best = max((r for n, r in runs.items() if n.startswith("graph")), key=lambda r: r.tokens_per_s)
    out = {
        "shape": shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "runs": {name: summary(r) for name, r in runs.items()},
        "speedup": {  # the fastest graph run over each baseline
            f"graph_over_{name}": round(best.tokens_per_s / r.tokens_per_s, 2)
            for name, r in runs.items()
            if not name.startswith("graph")
        },
        "identical_to_generate_b64": identical(graph, runs["generate_b64"]),
        "graph_many_rows": {"copies": args.many, **summary(many)} if args.many > 1 else None,
        "fused_kernels": fused,
        "compiled_layers": compiled,
    }
    for name in (n for n in runs if n.startswith("graph_")):  # every other graph run: its share too
        out[f"{name.removeprefix('graph_')}_identical_to_generate_b64"] = identical(
            runs[name], runs["generate_b64"]
        )
    if stacked is not None:
        out["stacked_lora"] = stacked
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_adapters(model: Any, tok: Any, prompts: list[str], args: argparse.Namespace, common: dict) -> dict:
    """One LoRA adapter's rows against K adapters' (K x the rows) in stacked passes of the graph loop, and
    the eval job's usual case: the untuned base and one adapter together (with the fused kernels when
    the shape's runs applied them)."""
    from peft import LoraConfig, get_peft_model

    names = [f"a{k}" for k in range(args.adapters)]
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(model, lora, adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, lora)
    cfg = GenerationConfig(engine="graph", batch_size=64, **common)
    result: dict[str, Any] = {"adapters": len(names), "rank": 16}
    with stacked_lora(peft, names) as stacked:
        for label, models in (("one", names[:1]), ("all", names), ("base_and_one", [BASE, names[0]])):
            rows = [m for m in models for _ in prompts]
            r = timed(stacked, tok, prompts * len(models), cfg, adapter_names=rows)
            result[label] = summary(r)
            print(
                f"stacked {label} ({len(models)} models): {r.tokens_per_s:,.0f} tok/s, {r.seconds:.2f} s",
                flush=True,
            )
        if args.compile and torch.cuda.is_available():  # the same with the layers compiled
            ccfg = GenerationConfig(engine="graph", batch_size=64, compile_layers=True, **common)
            started = time.perf_counter()
            timed(stacked, tok, prompts, ccfg, adapter_names=[names[0]] * len(prompts))
            result["compile_seconds"] = round(time.perf_counter() - started, 2)
            for label, models in (("one", names[:1]), ("all", names), ("base_and_one", [BASE, names[0]])):
                rows = [m for m in models for _ in prompts]
                r = timed(stacked, tok, prompts * len(models), ccfg, adapter_names=rows)
                result[f"compiled_{label}"] = summary(r)
                print(f"stacked compiled {label}: {r.tokens_per_s:,.0f} tok/s, {r.seconds:.2f} s", flush=True)
    result["all_over_one_seconds"] = round(result["all"]["seconds"] / result["one"]["seconds"], 2)
    if "compiled_all" in result:
        result["compiled_all_over_one_seconds"] = round(
            result["compiled_all"]["seconds"] / result["compiled_one"]["seconds"], 2
        )
    peft.set_adapter(names[0])  # one adapter merged into the weights: the base's kernels only
    peft.merge_adapter([names[0]])
    r = timed(peft, tok, prompts, cfg)
    result["one_merged"] = summary(r)
    print(f"one adapter merged: {r.tokens_per_s:,.0f} tok/s, {r.seconds:.2f} s", flush=True)
    peft.unmerge_adapter()
    peft.unload()
    return result


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    prompts = load_prompts(args.data, "plain", tok, args.limit)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    shapes = [bench_shape(s, tok, prompts, args, device) for s in args.shapes.split(",")]
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu {platform.machine()}"
    commit = (
        os.environ.get("FT_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    report = {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "data": str(args.data),
        "prompts": len(prompts),
        "prompt_tokens": {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        "max_new_tokens": args.max_new_tokens,
        "dtype": "bfloat16" if device == "cuda" else "float32",
        "shapes": shapes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fast-decoding-{name.replace(' ', '_')}-{commit[:7] or 'nogit'}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
