"""Training throughput and memory: the usual recipe (HF Trainer + PEFT, padding to the longest row) against
ft's own training path (worker.train.recipe.run_training, the code a train job runs), in one process, on
the same tokenised rows, with random-init models of real shapes. Real tokens/s counts non-padding tokens.

    python bench/train_throughput.py --rows .carry/rows --shape qwen2.5-1.5b --data adgen,faults \
        --variants baseline,ft-rows,ft,ft-fused --steps 12 --out bench/results

Variants (each a fresh model from the same seed, the same rows, the same effective batch):
- `baseline`: transformers.Trainer + peft LoRA, DataCollatorForSeq2Seq (pad to longest), SDPA, bf16,
  batch_size x grad_accum rows a step, no packing, no fused kernels, no compile;
- `ft-rows`: ft with --max-tokens-per-batch 0 and --no-fused-kernels (ft as it was: batch_size rows a
  micro-batch, length-grouped);
- `ft`: ft's micro-batches by token budget (--max-tokens-per-batch 16384), no fused kernels;
- `ft-fused`: ft's defaults: token budget and Liger's fused kernels.
- `ft-int8-llm`: ft's defaults on an int8 base (--base-bits 8) with bitsandbytes' LLM.int8() matmul
  (--int8-matmul llm-int8);
- `ft-int8`: the same with ft's default int8 matmul, weight-only (worker.models.int8_matmul).
`--synthetic N` trains on N random-token rows (lengths drawn around the fault reports': mean 580, at
most 2048; the last 30% of each row is the answer) when no tokenised rows are at hand; speed and memory do
not depend on the token values.
The rows come from ft's own conversion (chat template, SmolLM2's tokenizer; `--rows DIR` holds
`<data>.json` with input_ids and labels) so that both paths train on identical token ids. It reports, per
variant, median step time, real tokens/s, peak memory, and the loss on one fixed batch before training
(the two paths' losses must agree). JSON to --out, with the device, versions, settings and command.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES: dict[str, dict[str, Any]] = {  # the models' published configs (no weights needed)
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                         rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1e6,
                       rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rope_theta=1e5,
                         rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True),
}  # fmt: skip
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0}


def build_model_dir(shape: str, dest: Path) -> Path:
    """A randomly initialised model of the shape, saved once as an ordinary bf16 model directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (dest / "config.json").exists():
        return dest
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dest)
    del model
    return dest


def save_pad_tokenizer(dest: Path, pad_id: int) -> Any:
    """A tokenizer that only knows the rows' pad token, at its id: all either path asks of one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": pad_id, "<unk>": pad_id + 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")))
    tok.pad_token, tok.eos_token = "<pad>", "<pad>"
    tok.save_pretrained(dest)
    return tok


def load_rows(path: Path, limit: int) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {k: data[k][:limit] for k in ("input_ids", "labels")} | {
        "pad_id": data["pad_id"],
        "source": data["source"],
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _device() -> str:
    return "cuda" if _cuda() else "cpu"


def fixed_batch_loss(model: Any, rows: dict[str, Any], n: int = 8) -> float:
    """The loss on the first n rows, right-padded, as one batch (the same tensor for every variant)."""
    import torch

    from worker.train.batching import collate
    from worker.train.batching import load_rows as ft_rows

    data = ft_rows({"input_ids": rows["input_ids"][:n], "labels": rows["labels"][:n]})
    batch = {k: v.to(_device()) for k, v in collate(data, list(range(len(data))), rows["pad_id"]).items()}
    with torch.no_grad(), torch.autocast(_device(), dtype=torch.bfloat16, enabled=_cuda()):
        return float(model(**batch).loss)


def run_baseline(model_dir: Path, rows: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )  # fmt: skip

    dtype = torch.bfloat16 if _cuda() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(
        _device()
    )
    model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    loss0 = fixed_batch_loss(model, rows)
    collator = DataCollatorForSeq2Seq(
        AutoTokenizer.from_pretrained(model_dir), padding="longest", label_pad_token_id=-100
    )
    tokens: list[int] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            _sync()
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            _sync()
            times.append(time.perf_counter() - self.t)

    ds = Dataset.from_dict({"input_ids": rows["input_ids"], "labels": rows["labels"],
                            "attention_mask": [[1] * len(x) for x in rows["input_ids"]]})  # fmt: skip
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.warmup + args.steps, learning_rate=2e-4,
        bf16=_cuda(), use_cpu=not _cuda(), logging_steps=10_000, save_strategy="no", report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False, seed=42, optim="adamw_torch_fused" if _cuda() else "adamw_torch",
    )  # fmt: skip
    _free()
    Trainer(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=[Clock()]).train()
    per_step = [sum(tokens[i * args.grad_accum : (i + 1) * args.grad_accum]) for i in range(len(times))]
    result = _summary(times[args.warmup :], per_step[args.warmup :], loss0)
    del model
    _free()
    return result


def synthetic_rows(n: int, vocab: int, seed: int = 0) -> dict[str, Any]:
    """n random-token rows, lengths ~ N(580, 300) clipped to [64, 2048], the last 30% as labels."""
    import random

    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        length = min(2048, max(64, int(rng.gauss(580, 300))))
        row = [rng.randrange(3, vocab) for _ in range(length)]
        cut = int(length * 0.7)
        ids.append(row)
        labels.append([-100] * cut + row[cut:])
    return {"input_ids": ids, "labels": labels, "pad_id": 0, "source": f"synthetic ({n} rows, seed {seed})"}


def run_ft(model_dir: Path, rows: dict[str, Any], args: argparse.Namespace, **train: Any) -> dict[str, Any]:

    from worker.methods import get_method
    from worker.train.config import TrainConfig
    from worker.train.engine import TrainHooks, TrainPaths
    from worker.train.recipe import run_training

    method = get_method("lora")
    lora = LORA | train.pop("lora", {})
    cfg = TrainConfig(
        max_steps=args.warmup + args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=2e-4,
        save_steps=100_000, logging_steps=100_000, **train,
    ).with_method_defaults(method)  # fmt: skip
    marks: list[tuple[float, int]] = []

    def on_progress(progress: dict[str, Any]) -> None:
        _sync()
        marks.append((time.perf_counter(), progress["tokens_seen"]))

    losses: list[float] = []
    real_prepare = method.prepare

    def prepare_and_probe(base: Any, mc: Any) -> Any:
        model = real_prepare(base, mc)
        losses.append(fixed_batch_loss(model, rows))
        return model

    probed = dataclasses.replace(method, prepare=prepare_and_probe)  # the method, measured on a fixed batch
    _free()
    start = time.perf_counter()
    _, result, _ = run_training(
        model_dir, {"input_ids": rows["input_ids"], "labels": rows["labels"]}, probed,
        method.make_config(lora), cfg, TrainPaths(Path(tempfile.mkdtemp()) / "ckpt"),
        TrainHooks(on_progress=on_progress), device=_device(),
    )  # fmt: skip
    times = [b[0] - a[0] for a, b in zip([(start, 0), *marks], marks, strict=False)]
    tokens = [b[1] - a[1] for a, b in zip([(start, 0), *marks], marks, strict=False)]
    out = _summary(times[args.warmup :], tokens[args.warmup :], losses[0])
    out["peak_memory_gib"] = round(result.peak_memory_bytes / 2**30, 2)
    _free()
    return out


def _summary(times: list[float], tokens: list[int], loss0: float) -> dict[str, Any]:
    import torch

    peak = torch.cuda.max_memory_allocated() if _cuda() else 0
    return {
        "median_step_s": round(statistics.median(times), 4),
        "tokens_per_step": round(statistics.fmean(tokens), 1),
        "real_tokens_per_s": round(sum(tokens) / sum(times), 1),
        "peak_memory_gib": round(peak / 2**30, 2),
        "fixed_batch_loss": round(loss0, 5),
        "steps_timed": len(times),
    }


VARIANTS = {
    "baseline": None,
    "ft-rows": {"max_tokens_per_batch": 0, "fused_kernels": False},
    "ft": {"max_tokens_per_batch": 16384, "fused_kernels": False},
    "ft-fused": {"max_tokens_per_batch": 16384, "fused_kernels": True},
    "ft-int8-llm": {"max_tokens_per_batch": 16384, "fused_kernels": True,
                    "lora": {"base_bits": 8, "int8_matmul": "llm-int8"}},
    "ft-int8": {"max_tokens_per_batch": 16384, "fused_kernels": True, "lora": {"base_bits": 8}},
}  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    import peft
    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=ROOT / ".carry" / "rows")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--data", default="adgen,faults")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--limit", type=int, default=512, help="rows of each data set")
    ap.add_argument("--synthetic", type=int, default=0, help="N random-token rows instead of --rows")
    ap.add_argument("--tag", default="", help="added to the results file's name")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "ft-bench-models")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "bench" / "results")))
    args = ap.parse_args(argv)
    model_dir = build_model_dir(args.shape, args.model_dir / args.shape)
    record: dict[str, Any] = {
        "command": " ".join(["python", "bench/train_throughput.py", *(sys.argv[1:] if argv is None else
        argv)]),
        "device": torch.cuda.get_device_name(0) if _cuda() else "cpu", "shape": args.shape, "config":
        SHAPES[args.shape], "lora": LORA,
        "settings": {k: v for k, v in vars(args).items() if k not in ("rows", "model_dir", "out")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "commit": os.environ.get("FT_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                                                               capture_output=True, text=True).stdout.strip(),
        "variants": VARIANTS, "results": {},
    }  # fmt: skip
    # --synthetic: the same random rows each pass (`--data` only names how many passes: their spread is
    # the run-to-run noise), labelled as passes, not as the data sets they are not.
    passes = args.data.split(",")
    for i, data in enumerate(passes):
        if args.synthetic:
            data = f"synthetic-pass-{i + 1}"
        rows = (
            synthetic_rows(args.synthetic, SHAPES[args.shape]["vocab_size"])
            if args.synthetic
            else load_rows(args.rows / f"{data}.json", args.limit)
        )
        save_pad_tokenizer(model_dir, rows["pad_id"])
        lengths = [len(x) for x in rows["input_ids"]]
        record["results"][data] = {"rows": len(lengths), "mean_tokens": round(statistics.fmean(lengths), 1),
                                   "max_tokens": max(lengths), "source": rows["source"]}  # fmt: skip
        for variant in args.variants.split(","):
            train = copy.deepcopy(VARIANTS[variant])
            try:
                out = (
                    run_baseline(model_dir, rows, args)
                    if train is None
                    else run_ft(model_dir, rows, args, **train)
                )
            except Exception as exc:  # report and go on: one variant's failure must not lose the others
                out = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                _free()
            record["results"][data][variant] = out
            print(data, variant, json.dumps(out), flush=True)
            _save(args.out, record)  # a run cut short still reports what it finished
        base = record["results"][data].get("baseline", {})
        for variant in args.variants.split(","):
            mine = record["results"][data].get(variant, {})
            if base.get("real_tokens_per_s") and mine.get("real_tokens_per_s"):
                mine["speed_vs_baseline"] = round(mine["real_tokens_per_s"] / base["real_tokens_per_s"], 2)
                if base.get("peak_memory_gib"):
                    mine["memory_vs_baseline"] = round(mine["peak_memory_gib"] / base["peak_memory_gib"], 2)
        int8, llm = record["results"][data].get("ft-int8", {}), record["results"][data].get("ft-int8-llm", {})
        if int8.get("real_tokens_per_s") and llm.get("real_tokens_per_s"):
            int8["speed_vs_llm_int8"] = round(int8["real_tokens_per_s"] / llm["real_tokens_per_s"], 2)
            int8["memory_vs_llm_int8"] = round(int8["peak_memory_gib"] / max(llm["peak_memory_gib"], 1e-9), 2)
    path = _save(args.out, record)
    print(path)
    return path


def _save(out: Path, record: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tag = f"-{record['settings']['tag']}" if record["settings"].get("tag") else ""
    path = out / f"train-throughput-{record['shape']}{tag}-{record['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps(record, indent=1))
    return path


if __name__ == "__main__":
    main()
