"""Train every method on the fault-report data and record the write-up's cost columns.

For each variant (freeze, ptuning, ptuning-v2, lora, lora --dora, lora --base-bits 8, qlora, full)
this runs ft's real recipe (`worker.train.recipe.run_training`) on SmolLM2-135M-Instruct, imported from
its GGUF through ft's own importer, on the data tokenised by ft's own conversion, for a short run,
in one process, and writes one JSON with per method: peak training memory, trainable / total
parameters, trainable %, training time, tokens/s, first and last loss.

    python bench/bench_methods.py --gguf /tmp/smollm2.gguf \
        --data ../shared/data/fault_triples_train.jsonl --max-steps 60

Runs on CPU too (quantised variants are then skipped with the reason recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "freeze": ("freeze", {}),
    "ptuning": ("ptuning", {}),
    "ptuning-v2": ("ptuning-v2", {"prefix_projection": True}),
    "lora": ("lora", {"rank": 16, "alpha": 32.0}),
    "lora-dora": ("lora", {"rank": 16, "alpha": 32.0, "dora": True}),
    "lora-int8": ("lora", {"rank": 16, "alpha": 32.0, "base_bits": 8}),
    "qlora": ("qlora", {"rank": 16, "alpha": 32.0}),
    "full": ("full", {}),
}


def prepare_data(home: Path, gguf: Path, data: Path, max_len: int):
    """Import the GGUF and tokenise the data with ft's own catalog functions."""
    os.environ["FT_HOME"] = str(home)
    from catalog.db import Catalog
    from catalog.migrate import upgrade
    from catalog.settings import Settings
    from catalog.store import ArtifactStore
    from catalog.templates import get_template
    from datasets_prep.convert import (
        build_conversion,
        load_tokenized,
        register_conversion,
        resolve_convert_spec,
    )
    from datasets_prep.register import add_dataset
    from datasets_prep.templates import seed_builtin_templates
    from worker.models.directories import model_dir
    from worker.models.directories import tokenizer_of as load_tokenizer
    from worker.models.gguf import import_gguf

    settings = Settings.from_env()
    settings.ensure_dirs()
    catalog, store = Catalog(settings), ArtifactStore(settings.artifacts)
    upgrade(catalog.engine)
    seed_builtin_templates(catalog, "bench")
    t0 = time.time()
    base = import_gguf(catalog, store, "smollm2", gguf, "bench")
    import_s = time.time() - t0
    ds = add_dataset(catalog, store, "faults", data, "triples", user="bench").dataset
    with catalog.session() as s:
        spec = resolve_convert_spec(s, dataset="faults", model="smollm2", template="plain", max_len=max_len)
        template = get_template(s, "plain")
    tok = load_tokenizer(store, base)
    built = build_conversion(store, spec, ds, template, tok)
    with catalog.session() as s:
        conv = register_conversion(s, spec, built, job_id=None, user="bench")
    return model_dir(store, base), load_tokenized(store, conv, "train"), import_s, built.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--methods", default=",".join(VARIANTS))
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import peft
    import torch
    import transformers

    from worker.methods import get_method
    from worker.train.config import TrainConfig
    from worker.train.engine import TrainPaths
    from worker.train.recipe import run_training

    home = Path(tempfile.mkdtemp(prefix="ft-bench-"))
    base_dir, train_data, import_s, stats = prepare_data(home, args.gguf, args.data, args.max_len)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    results = []
    for variant in args.methods.split(","):
        method, flags = VARIANTS[variant]
        registered = get_method(method)
        cfg = TrainConfig(
            epochs=1, max_steps=args.max_steps, batch_size=args.batch_size, save_steps=10_000,
            logging_steps=10,
        ).with_method_defaults(registered)  # fmt: skip
        row = {"variant": variant, "method": method, "flags": flags}
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            model, result, counts = run_training(
                base_dir, train_data, registered, registered.make_config(flags), cfg,
                TrainPaths(checkpoints=home / "ckpt" / variant),
            )  # fmt: skip
            row.update(
                trainable_params=counts.trainable,
                total_params=counts.total,
                trainable_percent=round(counts.percent, 4),
                peak_memory_gib=round(result.peak_memory_bytes / 2**30, 3),
                train_seconds=round(result.train_seconds, 2),
                wall_seconds_incl_load=round(time.time() - t0, 2),
                steps=result.steps,
                tokens_seen=result.tokens_seen,
                tokens_per_s=round(result.tokens_seen / result.train_seconds, 1),
                first_loss=round(result.losses[0], 4),
                last_loss=round(result.final_loss, 4),
                lr=cfg.with_method_defaults(get_method(method)).lr,
            )
            del model
        except Exception as exc:  # recorded, not hidden: e.g. quantised methods on a CPU
            row["error"] = f"{type(exc).__name__}: {exc}"
        gc.collect()
        results.append(row)
        print(json.dumps(row), flush=True)

    out = args.out or ROOT / "bench" / "results" / (
        f"methods-{device.replace(' ', '_')}-{dt.date.today().isoformat()}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "what": "ft training methods on SmolLM2-135M-Instruct, fault_triples_train.jsonl, template plain",
        "command": " ".join(sys.argv),
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "cuda": torch.version.cuda,
        },
        "settings": {
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "max_len": args.max_len,
            "dtype": "bf16 autocast" if cuda else "fp32",
        },  # fmt: skip
        "gguf_import_seconds": round(import_s, 1),
        "data_stats": stats,
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
