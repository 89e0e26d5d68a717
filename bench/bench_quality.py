"""Quality and evaluation speed of every method on the two reference tasks, through ft's own jobs.

Everything runs through the product's code paths in one process: the GGUF import, dataset
registration, `train` jobs and `eval` jobs executed by `worker.runner.run_job` (the function a
Celery worker calls), and the comparison table of `ft adapters compare`. Results are written to
`$OUT`/`--out` after every job, so a run cut short still reports what it finished.

    python bench/bench_quality.py --gguf /tmp/smollm2.gguf --data-dir ../shared/data \
        --home /tmp/ftq --task faults --variants lora,full,freeze
    python bench/bench_quality.py ... --task adgen --variants lora,qlora
    python bench/bench_quality.py ... --task speed          # batched vs one-at-a-time, 4 vs 1 adapters

A second call with the same --home reuses what the first one registered and trained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMON = {
    "epochs": 4, "batch_size": 16, "grad_accum": 2, "max_len": 2048, "save_steps": 100_000,
    "logging_steps": 20,
}  # fmt: skip
MAX_SOURCE_LEN = 1536
"""Fault reports run to 2,568 prompt tokens and 1,338 answer tokens with SmolLM2's tokenizer (Chinese is
about 2 tokens a character): 1536 + the answer keeps all but 11 of the 1,441 training rows whole."""
RECIPES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # variant: (method, method flags, training flags over COMMON)
    "freeze": ("freeze", {"layers": 8}, {"lr": 2e-4}),
    "ptuning": ("ptuning", {"virtual_tokens": 32}, {"lr": 1e-2}),
    "ptuning-v2": ("ptuning-v2", {"virtual_tokens": 64}, {"lr": 5e-3}),
    "lora": ("lora", {"rank": 32, "alpha": 64.0}, {"lr": 1e-3}),
    "lora-dora": ("lora", {"rank": 32, "alpha": 64.0, "dora": True}, {"lr": 1e-3}),
    "lora-r8": ("lora", {"rank": 8, "alpha": 16.0}, {"lr": 2e-3}),
    "lora-int8": ("lora", {"rank": 32, "alpha": 64.0, "base_bits": 8}, {"lr": 1e-3}),
    "qlora": ("qlora", {"rank": 32, "alpha": 64.0}, {"lr": 1e-3}),
    "full": ("full", {}, {"lr": 5e-5}),
    # the tuning sweep (issue #4): longer runs, learning rates, freeze depth, prefix length
    "lora-e8": ("lora", {"rank": 32, "alpha": 64.0}, {"lr": 5e-4, "epochs": 8}),
    "lora-r64-e8": ("lora", {"rank": 64, "alpha": 128.0}, {"lr": 5e-4, "epochs": 8}),
    "full-e8": ("full", {}, {"lr": 5e-5, "epochs": 8}),
    "freeze-l16-e8": ("freeze", {"layers": 16}, {"lr": 1e-4, "epochs": 8}),
    "freeze-l12-e8": ("freeze", {"layers": 12}, {"lr": 3e-4, "epochs": 8}),
    "ptuning-v2-vt128-e8": ("ptuning-v2", {"virtual_tokens": 128}, {"lr": 2e-2, "epochs": 8}),
    "ptuning-v2-proj-e8":
        ("ptuning-v2", {"virtual_tokens": 64, "prefix_projection": True}, {"lr": 2e-3, "epochs": 8}),
    "ptuning-vt64-e8": ("ptuning", {"virtual_tokens": 64}, {"lr": 3e-3, "epochs": 8}),
    "ptuning-vt128-e8": ("ptuning", {"virtual_tokens": 128}, {"lr": 1e-2, "epochs": 8}),
    "full-lr2e-4": ("full", {}, {"lr": 2e-4}),
    "lora-lr2e-3": ("lora", {"rank": 32, "alpha": 64.0}, {"lr": 2e-3}),
    "lora-r64-lr1e-3": ("lora", {"rank": 64, "alpha": 128.0}, {"lr": 1e-3}),
    "ptuning-e20": ("ptuning", {"virtual_tokens": 64}, {"lr": 1e-2, "epochs": 20}),
    "ptuning-lstm-e12": ("ptuning", {"virtual_tokens": 64, "encoder": "lstm"}, {"lr": 1e-2, "epochs": 12}),
    "ptuning-lr3e-2": ("ptuning", {"virtual_tokens": 64}, {"lr": 3e-2, "epochs": 8}),
    "ptuning-h1024": ("ptuning", {"virtual_tokens": 64, "encoder_hidden": 1024}, {"lr": 1e-2, "epochs": 8}),
    # next to try for P-Tuning (0.118 at lr 3e-2, 8 epochs; it rose with lr and with training length)
    "ptuning-lr3e-2-e20": ("ptuning", {"virtual_tokens": 64}, {"lr": 3e-2, "epochs": 20}),
    "ptuning-lr1e-1": ("ptuning", {"virtual_tokens": 64}, {"lr": 1e-1, "epochs": 8}),
    "ptuning-lr3e-2-e16": ("ptuning", {"virtual_tokens": 64}, {"lr": 3e-2, "epochs": 16}),
    "ptuning-lr6e-2-e16": ("ptuning", {"virtual_tokens": 64}, {"lr": 6e-2, "epochs": 16}),
    # the same recipe with other seeds (P-Tuning's F1 moved from 0.04 to 0.15 between nearby recipes)
    **{f"ptuning-lr6e-2-e16-s{s}": ("ptuning", {"virtual_tokens": 64}, {"lr": 6e-2, "epochs": 16, "seed": s})
       for s in (1, 2, 3)},
}  # fmt: skip
TASKS = {
    "faults": {"dataset": "faults", "metric": "triple-f1", "template": "chat", "max_new_tokens": 512},
    "adgen": {"dataset": "adgen", "metric": "bleu-rouge-zh", "template": "chat", "max_new_tokens": 384},
}


class Bench:
    def __init__(self, home: Path, out: Path):
        os.environ["FT_HOME"] = str(home)
        os.environ.setdefault("FT_USER", "bench")
        from catalog.db import Catalog
        from catalog.migrate import upgrade
        from catalog.settings import Settings
        from catalog.store import ArtifactStore
        from datasets_prep.templates import seed_builtin_templates

        self.settings = Settings.from_env()
        self.settings.ensure_dirs()
        self.catalog, self.store = Catalog(self.settings), ArtifactStore(self.settings.artifacts)
        upgrade(self.catalog.engine)
        seed_builtin_templates(self.catalog, "bench")
        self.out = out
        self.record: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"jobs": []}

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.record, indent=2, ensure_ascii=False, default=str))

    def setup(self, gguf: Path, data: Path) -> None:
        from sqlalchemy import select

        from catalog.models import BaseModel
        from datasets_prep.register import add_dataset
        from worker.base_models import import_gguf

        with self.catalog.session() as s:
            have = s.scalars(select(BaseModel.id).where(BaseModel.name == "smollm2")).first() is not None
        if not have:
            import_gguf(self.catalog, self.store, "smollm2", gguf, "bench")
        add_dataset(self.catalog, self.store, "faults", data / "fault_triples_train.jsonl", "triples",
                    test_path=data / "fault_triples_test.jsonl", user="bench")  # fmt: skip
        add_dataset(self.catalog, self.store, "adgen", data / "adgen_dev.jsonl", "adgen",
                    splits={"test": 100}, seed=0, user="bench")  # fmt: skip

    def run(self, kind: str, spec: dict[str, Any], label: str) -> dict[str, Any]:
        from catalog.jobs import create_job, get_job
        from worker.runner import run_job

        with self.catalog.session() as s:
            job_id = create_job(s, kind, spec, "bench", queue="gpu", logs_dir=str(self.settings.logs)).id
        t0 = time.perf_counter()
        status = run_job(self.catalog, job_id, "bench", store=self.store)
        seconds = time.perf_counter() - t0
        with self.catalog.session() as s:
            job = get_job(s, job_id)
            entry = {"label": label, "kind": kind, "job": job_id, "status": status,
                     "seconds": round(seconds, 2), "error": job.error, "result": job.result}  # fmt: skip
        self.record["jobs"].append(entry)
        self.save()
        print(json.dumps(entry, default=str)[:600], flush=True)
        return entry

    def train(self, task: str, variant: str) -> str:
        from catalog.adapters import get_adapter
        from catalog.errors import NotFound
        from worker.train_spec import resolve_train_spec

        name = f"{task}-{variant}"
        with self.catalog.session() as s:
            try:
                get_adapter(s, name)
                return name
            except NotFound:
                pass
            method, flags, train = RECIPES[variant]
            spec = resolve_train_spec(
                s, name=name, method=method, model="smollm2", dataset=TASKS[task]["dataset"],
                template=TASKS[task]["template"], method_flags=flags, train_flags={**COMMON, **train},
                max_source_len=MAX_SOURCE_LEN,
            )  # fmt: skip
        self.run("train", spec.to_json(), f"train {name}")
        return name

    def convert(self, task: str) -> None:
        """The tokenised dataset every training job of `task` shares (a cache hit when it exists)."""
        from datasets_prep.convert import resolve_convert_spec

        t = TASKS[task]
        with self.catalog.session() as s:
            spec = resolve_convert_spec(
                s, dataset=t["dataset"], model="smollm2", template=t["template"], max_len=COMMON["max_len"],
                max_source_len=MAX_SOURCE_LEN,
            )  # fmt: skip
        self.run("convert", spec.to_json(), f"convert {task}")

    def evaluate(
        self, task: str, adapters: list[str], base: bool, label: str, split: str = "test", **kw: Any
    ) -> dict[str, Any]:
        from worker.eval_spec import resolve_eval_specs

        t = TASKS[task]
        with self.catalog.session() as s:
            (spec,) = resolve_eval_specs(
                s, self.store, adapters=adapters, bases=["smollm2"] if base else [],
                dataset=f"{t['dataset']}:{split}", metric=t["metric"],
                template=t["template"] if base else None,
                **{"max_new_tokens": t["max_new_tokens"], "limit": t.get("limit"), **kw},
            )  # fmt: skip
        return self.run("eval", spec.to_json(), label)

    def compare(self, task: str) -> str:
        """The table of every adapter of `task` trained in this home so far, with the base."""
        from catalog.adapters import list_adapters
        from cli.compare import render_markdown
        from worker.eval_spec import comparison

        t = TASKS[task]
        with self.catalog.session() as s:
            order = {f"{task}-{v}": i for i, v in enumerate(RECIPES)}
            adapters = sorted((a.name for a in list_adapters(s) if a.name in order), key=order.__getitem__)
            data = comparison(
                s, self.store, adapters, dataset=f"{t['dataset']}:test", metric=t["metric"], base=True
            )
        self.record.setdefault("compare", {})[task] = data
        self.record.setdefault("markdown", {})[task] = render_markdown(data)
        self.save()
        return self.record["markdown"][task]


def speed(bench: Bench, task: str, parts: str, four: list[str]) -> None:
    """Batched generation vs one prompt at a time (the write-up's script; part "batching"), and one eval
    job of 4 LoRA adapters vs one of 1 on the same trained adapters (part "adapters"), in this process."""
    if "batching" in parts:
        speed_batching(bench, task)
    if "adapters" in parts:
        speed_adapters(bench, task, four)


def speed_batching(bench: Bench, task: str) -> None:
    import torch

    from datasets_prep.canonical import load_split
    from datasets_prep.register import get_dataset
    from datasets_prep.templates import get_template, render_prompt
    from worker.adapter_io import load_for_inference
    from worker.base_models import get_base_model, load_tokenizer, model_dir
    from worker.generation import GenerationConfig, generate, generate_one_at_a_time

    t = TASKS[task]
    lora = bench.train(task, "lora")
    with bench.catalog.session() as s:
        base = get_base_model(s, "smollm2")
        rows = list(load_split(bench.store, get_dataset(s, t["dataset"]), "test"))
        tpl = get_template(s, t["template"])
        from catalog.adapters import get_adapter

        artifact = bench.store.path(get_adapter(s, lora).artifact_uri)
    tok = load_tokenizer(bench.store, base)
    prompts = [render_prompt(tpl.kind, tpl.body, r, tok) for r in rows]
    model = load_for_inference(
        model_dir(bench.store, base), artifact, "lora", device="cuda", dtype=torch.bfloat16
    )
    cfg = GenerationConfig(max_new_tokens=t["max_new_tokens"], batch_size=64, stop_on_repeated_line=True)
    generate(model, tok, prompts[:4], cfg, add_special_tokens=False)  # warm-up
    torch.cuda.synchronize()
    one = generate_one_at_a_time(model, tok, prompts, cfg, add_special_tokens=False)
    torch.cuda.synchronize()
    batched = generate(model, tok, prompts, cfg, add_special_tokens=False)
    torch.cuda.synchronize()
    same = sum(a == b for a, b in zip(one.texts, batched.texts, strict=True)) / len(prompts)
    bench.record["generation_speed"] = {
        "prompts": len(prompts), "one_at_a_time_s": round(one.seconds, 2),
        "batched_s": round(batched.seconds, 2), "speedup": round(one.seconds / batched.seconds, 2),
        "batch_size": cfg.batch_size, "identical_fraction": same, "new_tokens_one": one.new_tokens,
        "new_tokens_batched": batched.new_tokens,
    }  # fmt: skip
    bench.save()
    print(bench.record["generation_speed"], flush=True)


def speed_adapters(bench: Bench, task: str, variants: list[str]) -> None:
    """Two eval jobs on the same adapters, timed whole (load, generate, score, register): the first
    adapter alone, then all four; a warm-up job first so that neither pays for CUDA's start."""
    four = [bench.train(task, v) for v in variants]
    bench.evaluate(task, four[:1], False, "speed: warm-up", limit=4)
    single = bench.evaluate(task, four[:1], False, "speed: eval 1 adapter")
    multi = bench.evaluate(task, four, False, "speed: eval 4 adapters")
    bench.record["multi_adapter_speed"] = {
        "adapters": four, "one_adapter_s": single["seconds"], "four_adapters_s": multi["seconds"],
        "ratio": round(multi["seconds"] / single["seconds"], 2),
        "shared_batches": multi["result"].get("shared_batches"),
        "generation_s": {"one": _gen_seconds(single), "four": _gen_seconds(multi)},
    }  # fmt: skip
    bench.save()
    print(bench.record["multi_adapter_speed"], flush=True)


def _gen_seconds(entry: dict[str, Any]) -> float | None:
    """Seconds spent generating in an eval job (its evaluations' shares summed)."""
    from catalog.models import Evaluation

    ids = (entry.get("result") or {}).get("evaluation_ids") or []
    if not ids:
        return None
    from catalog.db import Catalog
    from catalog.settings import Settings

    with Catalog(Settings.from_env()).session() as s:
        return round(sum(s.get_one(Evaluation, i).seconds for i in ids), 2)


def dump_predictions(bench: Bench, task: str, dest: Path) -> None:
    """Every evaluation's predictions of `task` in one tarball (adapter name as the file name)."""
    import tarfile

    from catalog.models import Adapter, Evaluation

    with bench.catalog.session() as s, tarfile.open(dest, "w:gz") as tar:
        for ev in s.query(Evaluation):
            name = s.get_one(Adapter, ev.adapter_id).name if ev.adapter_id else "base"
            if name.startswith(f"{task}-") or (name == "base" and ev.metric == TASKS[task]["metric"]):
                path = bench.store.path(ev.predictions_uri) / "predictions.jsonl"
                tar.add(path, arcname=f"{name}-{ev.id}.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--home", type=Path, default=Path("/tmp/ftq"))
    ap.add_argument("--task", choices=[*TASKS, "speed"], required=True)
    ap.add_argument("--variants", default="lora")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="2 steps, 2 rows, 8 tokens: check the script runs")
    ap.add_argument("--no-base", action="store_true", help="do not evaluate the untuned base")
    ap.add_argument("--micro-batch", type=int, default=0, help="micro-batch (accumulating to 32)")
    ap.add_argument("--speed-parts", default="batching,adapters", help="with --task speed")
    ap.add_argument("--train-rows", type=int, default=0, help="also evaluate on N training rows")
    ap.add_argument("--predictions", type=Path, help="write every evaluation's predictions here (.tar.gz)")
    ap.add_argument(
        "--train-budget", type=float, default=0, help="start no new training after N s (0: no limit)"
    )
    args = ap.parse_args()
    if args.micro_batch:
        COMMON.update(batch_size=args.micro_batch, grad_accum=max(1, 32 // args.micro_batch))
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in RECIPES]:
        ap.error(f"unknown variants {unknown}; known: {', '.join(RECIPES)}")
    if args.smoke:
        COMMON.update(max_steps=2, batch_size=2, grad_accum=1)
        for t in TASKS.values():
            t.update(max_new_tokens=8, limit=2)

    import peft
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = args.out or Path(os.environ.get("OUT", ROOT / "bench" / "results")) / f"quality-{args.task}.json"
    bench = Bench(args.home, out)
    bench.record.update(
        command=" ".join(sys.argv), device=device,
        versions={"python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "peft": peft.__version__},
        recipes={v: RECIPES[v] for v in RECIPES}, common=COMMON, tasks=TASKS,
    )  # fmt: skip
    bench.setup(args.gguf, args.data_dir)
    if args.task == "speed":
        speed(bench, "faults", args.speed_parts, variants)
        return
    bench.convert(args.task)
    began, names = time.monotonic(), []
    for v in variants:
        if args.train_budget and time.monotonic() - began > args.train_budget:
            bench.record.setdefault("not_trained", []).append(v)
            continue
        names.append(bench.train(args.task, v))
    bench.evaluate(
        args.task, names, not args.no_base, f"eval {args.task}: {len(names)} adapters", batch_size=64
    )  # fmt: skip
    print(bench.compare(args.task), flush=True)
    if args.train_rows:  # memorised or not: tells under-fitting from a train/eval mismatch
        bench.evaluate(args.task, names, False, "eval on training rows", split="train", limit=args.train_rows)
    if args.predictions:
        dump_predictions(bench, args.task, args.predictions)


if __name__ == "__main__":
    main()
