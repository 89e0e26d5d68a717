"""Benchmark batched generation (worker/evaluation/generation.py) against one prompt at a time, in one
process.

Loads a model directory (and optionally a peft adapter), renders each row of a jsonl file as
instruction + input, warms up, then generates for the same prompts twice: one `model.generate` per
prompt (what the write-up's evaluation script did) and batched (left padding, length-sorted batches).
Writes bench/results/generation-<device>-<date>.json: device, versions, command line, prompt count,
seconds and tokens/s of each, the speed-up, and the fraction of identical outputs (greedy batched and
unbatched agree exactly in fp32; in bf16 padding changes rounding, so a few may differ).

Run from the project root (on a machine where `ft` is not installed, with PYTHONPATH=$PWD):

    python bench/bench_generation.py --model DIR --data ../shared/data/fault_triples_test.jsonl
    python bench/bench_generation.py --model DIR --adapter ADAPTER_DIR --batch-size 32 --stop-on-repeated-line
    python bench/bench_generation.py --model DIR --limit 4 --max-new-tokens 16   # quick CPU check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from datasets_prep.rows import Row
from worker.evaluation.generation import GenerationConfig, GenerationResult, generate, generate_one_at_a_time

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fault_triples_test.jsonl"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="a transformers model directory")
    p.add_argument("--adapter", type=Path, help="a peft adapter directory to load on top")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="jsonl rows with instruction/input/output")
    p.add_argument("--limit", type=int, help="use only the first N rows")
    p.add_argument("--template", choices=["plain", "chat"], default="plain", help="built-in template")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--stop-on-repeated-line", action="store_true")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bf16 on CUDA, else fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return p.parse_args(argv)


def render(row: Row, template: str, tokenizer: Any) -> str:
    """The built-in `plain` / `chat` templates, rendered here without the catalog (so the GPU machine
    needs no database packages): instruction + input, as is or as the user turn of a chat."""
    text = row.instruction + row.input
    if template == "plain":
        return text
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_prompts(path: Path, template: str, tokenizer: Any, limit: int | None) -> list[str]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                prompts.append(render(Row.from_json(json.loads(line)), template, tokenizer))
            if limit is not None and len(prompts) >= limit:
                break
    return prompts


def load_model(args: argparse.Namespace) -> tuple[Any, Any, torch.dtype]:
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else DTYPES["bf16" if args.device != "cpu" else "fp32"]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    return model.eval(), tokenizer, dtype


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu {platform.machine()}".strip()


def timed(fn: Any, device: str, *args: Any, **kwargs: Any) -> GenerationResult:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
    result = fn(*args, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
    return result


def summary(result: GenerationResult) -> dict[str, Any]:
    return {
        "seconds": round(result.seconds, 3),
        "new_tokens": result.new_tokens,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "peak_memory_bytes": result.peak_memory_bytes,
    }


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    model, tokenizer, dtype = load_model(args)
    prompts = load_prompts(args.data, args.template, tokenizer, args.limit)
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        stop_on_repeated_line=args.stop_on_repeated_line,
    )
    special = {"add_special_tokens": args.template != "chat"}  # a chat template writes its own
    warm = GenerationConfig(max_new_tokens=8, batch_size=2)
    generate_one_at_a_time(model, tokenizer, prompts[:2], warm, **special)
    generate(model, tokenizer, prompts[:4], warm, **special)

    single = timed(generate_one_at_a_time, args.device, model, tokenizer, prompts, cfg, **special)
    print(f"one at a time: {single.seconds:.1f} s, {single.tokens_per_s:.1f} tokens/s", flush=True)
    batched = timed(generate, args.device, model, tokenizer, prompts, cfg, **special)
    print(f"batched: {batched.seconds:.1f} s, {batched.tokens_per_s:.1f} tokens/s", flush=True)

    same = [a == b for a, b in zip(single.texts, batched.texts, strict=True)]
    name = device_name(args.device)
    report = {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "model": str(args.model),
        "adapter": str(args.adapter) if args.adapter else None,
        "data": str(args.data),
        "template": args.template,
        "dtype": str(dtype).removeprefix("torch."),
        "prompts": len(prompts),
        "config": vars(cfg),
        "one_at_a_time": summary(single),
        "batched": summary(batched),
        "speedup": round(single.seconds / max(batched.seconds, 1e-9), 2),
        "identical_fraction": round(sum(same) / max(len(same), 1), 3),
        "first_differences": [
            {"index": i, "one_at_a_time": single.texts[i][:200], "batched": batched.texts[i][:200]}
            for i, ok in enumerate(same)
            if not ok
        ][:3],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"
    path = args.out / f"generation-{slug}-{dt.date.today().isoformat()}.json"
    n = 2
    while path.exists():
        path = args.out / f"generation-{slug}-{dt.date.today().isoformat()}-{n}.json"
        n += 1
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"speed-up {report['speedup']}x, identical {report['identical_fraction']:.0%}; wrote {path}")
    return path


if __name__ == "__main__":
    main()
