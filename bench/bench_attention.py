"""cuDNN attention against the kernels ft allows (worker/models/attention.py), in decoding and in training, in
one process.

Decoding: ft's batched generation (worker/evaluation/generation.py) on the same prompts, once with PyTorch
free to
pick cuDNN attention (the baseline) and once as ft runs it. Training: forward + backward of bf16-autocast
full fine-tuning over the same right-padded micro-batches of real training rows (padded to a multiple of
8, as worker/train/engine.py does), each variant twice: a cold pass (new shapes: cuDNN builds its graphs) and
a warm pass (every shape seen). Gradients are dropped after each micro-batch, so the weights never change.

    python bench/bench_attention.py --model DIR --train ../shared/data/fault_triples_train.jsonl \\
        --test ../shared/data/fault_triples_test.jsonl --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import DTYPES, device_name, load_prompts, render  # noqa: E402

import worker.generation as generation  # noqa: E402
from datasets_prep.rows import Row  # noqa: E402
from worker.models.attention import without_cudnn_attention  # noqa: E402
from worker.train.batching import IGNORE, collate, load_rows  # noqa: E402


def decode(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, cudnn: bool) -> dict[str, Any]:
    """One warm-up call, then one timed call of ft's generate(); with `cudnn`, ft's restriction is lifted."""
    cfg = generation.GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(prompts))
    original = generation.without_cudnn_attention
    generation.without_cudnn_attention = nullcontext if cudnn else original  # type: ignore[assignment]
    try:
        generation.generate(model, tok, prompts[:2], cfg)
        result = generation.generate(model, tok, prompts, cfg)
    finally:
        generation.without_cudnn_attention = original  # type: ignore[assignment]
    return {
        "seconds": round(result.seconds, 3), "new_tokens": result.new_tokens,
        "ms_per_step_at_most": round(1000 * result.seconds / max_new_tokens, 2), "texts": result.texts,
    }  # fmt: skip


def training_batches(path: Path, tok: Any, rows: int, micro: int, max_len: int) -> list[dict[str, Any]]:
    """`rows` training rows (seeded shuffle) as chat prompt + answer + EOS, in micro-batches made by the
    trainer's own `load_rows` and `collate` (right padding to a multiple of 8, prompt labels -100)."""
    with open(path, encoding="utf-8") as f:
        data = [Row.from_json(json.loads(line)) for line in f if line.strip()]
    random.Random(0).shuffle(data)
    columns: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    for row in data[:rows]:
        prompt = tok(render(row, "chat", tok), add_special_tokens=False)["input_ids"]
        answer = tok(row.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        columns["input_ids"].append(prompt + answer)
        columns["labels"].append([IGNORE] * len(prompt) + answer)
    tokenised = load_rows(columns, max_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = list(range(len(tokenised)))
    return [collate(tokenised, order[i : i + micro], pad, 8) for i in range(0, len(order), micro)]


def train_pass(model: Any, batches: list[dict[str, torch.Tensor]], cudnn: bool) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in batches:
        batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
        kernels = nullcontext() if cudnn else without_cudnn_attention()
        with torch.autocast("cuda", dtype=torch.bfloat16), kernels:
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return round(time.perf_counter() - t0, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--prompts", type=int, default=16, help="decoding: prompts in the one batch")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rows", type=int, default=256, help="training rows")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    report: dict[str, Any] = {
        "device": device_name("cuda"), "torch": torch.__version__, "transformers": transformers.__version__,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }  # fmt: skip

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES["bf16"]).cuda().eval()
    prompts = load_prompts(args.test, "chat", tok, args.prompts)
    cudnn, ft = (decode(model, tok, prompts, args.max_new_tokens, c) for c in (True, False))
    report["decode"] = {
        "dtype": "bfloat16", "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "cudnn_allowed": cudnn, "ft": ft, "speedup": round(cudnn["seconds"] / ft["seconds"], 2),
        "identical_texts": cudnn.pop("texts") == ft.pop("texts"),
    }  # fmt: skip
    print("decode", report["decode"], flush=True)
    del model

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES["fp32"]).cuda().train()
    model.config.use_cache = False
    batches = training_batches(args.train, tok, args.rows, args.micro_batch, args.max_len)
    train_pass(model, batches[:2], cudnn=False)  # CUDA context, cuBLAS handles, allocator
    passes = {}
    for name, flag in (("ft", False), ("cudnn_allowed", True)):
        cold = train_pass(model, batches, flag)
        passes[name] = {"cold_s": cold, "warm_s": train_pass(model, batches, flag)}
    report["train"] = {
        "rows": args.rows, "micro_batch": args.micro_batch, "micro_batches": len(batches),
        "distinct_shapes": len({tuple(b["input_ids"].shape) for b in batches}), **passes,
        "speedup_cold": round(passes["cudnn_allowed"]["cold_s"] / passes["ft"]["cold_s"], 2),
        "speedup_warm": round(passes["cudnn_allowed"]["warm_s"] / passes["ft"]["warm_s"], 2),
    }  # fmt: skip
    print("train", report["train"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "attention.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
