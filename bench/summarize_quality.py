"""Every evaluation recorded by bench_quality.py runs, and the best recipe of each method, as Markdown.

    python bench/summarize_quality.py                 # bench/results/quality-faults-*.json, eval-*.json
    python bench/summarize_quality.py --task adgen

A recipe trained at several seeds counts as the mean of its seeds when each method's best is chosen.

Each results file carries its own recipes (`recipes`), shared training settings (`common`) and the
`ft adapters compare` data of what it evaluated, so rows from runs with different settings stay honest:
the table says, per row, the epochs, the effective batch, --max-len and --max-new-tokens it ran with.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def method_label(method: str, flags: dict[str, Any]) -> str:
    """The table's method: DoRA and LoRA over an int8 base are rows of their own."""
    if method == "lora" and flags.get("dora"):
        return "lora (DoRA)"
    if method == "lora" and flags.get("base_bits") == 8:
        return "lora (int8 base)"
    return method


def rows_of(path: Path, task: str) -> list[dict[str, Any]]:
    """One row per evaluated adapter of `task` in one results file (the base is a row too)."""
    record = json.loads(path.read_text())
    data = (record.get("compare") or {}).get(task)
    if not data:
        return []
    common = record.get("common", {})
    rows = []
    for column in data["columns"]:
        if column.get("evaluation_id") is None:
            continue
        variant = column["name"].removeprefix(f"{task}-")
        method, flags, train = record.get("recipes", {}).get(variant, (column["method"] or "-", {}, {}))
        settings = {**common, **train}
        batch = settings.get("batch_size", 0) * settings.get("grad_accum", 1)
        if column["kind"] == "base":
            flags, train, settings, batch = {}, {}, {"epochs": "-", "max_len": "-"}, "-"
        rows.append({
            "method": "(untuned)" if column["kind"] == "base" else method_label(method, flags),
            "variant": column["name"] if column["kind"] == "base" else variant,
            "recipe": ", ".join(f"{k}={v}" for k, v in {**flags, "lr": train.get("lr")}.items())
            if train
            else "-",
            "seed": train.get("seed", 42) if train else None,
            "epochs": settings.get("epochs"), "batch": batch, "max_len": settings.get("max_len"),
            "new_tokens": (column.get("generation") or {}).get("max_new_tokens"),
            "metrics": column["metrics"], "train_s": column.get("train_seconds"),
            "train_mem": column.get("peak_training_memory_bytes"), "test_s": column.get("test_seconds"),
            "trainable_pct": column.get("trainable_percent"), "file": path.name,
        })  # fmt: skip
    return rows


def merge_seeds(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Rows that differ only in the training seed (variants NAME and NAME-sK) become one row with the
    mean of each metric, so a method's best is not the luckiest seed; the variant cell gives the spread."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        base = re.sub(r"-s\d+$", "", r["variant"])
        key = (r["method"], base, r["recipe"], r["epochs"], r["batch"], r["max_len"], r["new_tokens"])
        groups.setdefault(key, []).append(r)
    merged = []
    for (_, base, *_), group in groups.items():
        seeds = {r["seed"] for r in group}
        if len(seeds) < 2:
            merged.extend(group)
            continue
        first, headline = group[0], keys[0]
        scores = sorted(r["metrics"][headline] for r in group)
        spread = f"{headline} {scores[0]:.3f}-{scores[-1]:.3f}"
        merged.append({
            **first, "variant": f"{base}, mean of {len(seeds)} seeds ({spread})",
            "metrics": {k: sum(r["metrics"][k] for r in group) / len(group) for k in keys},
            "train_s": sum(r["train_s"] or 0 for r in group) / len(group),
            "file": f"{len({r['file'] for r in group})} files, {base}*",
        })  # fmt: skip
    return merged


def markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    head = ["method", "variant", "recipe", "epochs", "batch", "max len", "new tokens", *keys,
            "train time", "peak train mem", "trainable %", "file"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [
            r["method"],
            r["variant"],
            r["recipe"],
            r["epochs"],
            r["batch"],
            r["max_len"],
            r["new_tokens"],
        ]
        cells += [f"{r['metrics'].get(k, 0):.4f}" if k in r["metrics"] else "-" for k in keys]
        cells += [
            f"{r['train_s']:.0f} s" if r["train_s"] else "-",
            f"{r['train_mem'] / 2**30:.1f} GiB" if r["train_mem"] else "-",
            f"{r['trainable_pct']:.2f}" if r["trainable_pct"] is not None else "-",
            r["file"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="faults", choices=["faults", "adgen"])
    ap.add_argument("--all", action="store_true", help="every evaluation, not the best of each method")
    args = ap.parse_args()
    headline, keys = ("f1", ["f1", "precision", "recall"]) if args.task == "faults" else (
        "bleu-4", ["bleu-4", "rouge-1", "rouge-2", "rouge-l"])  # fmt: skip
    files = sorted(RESULTS.glob(f"quality-{args.task}*.json")) + sorted(RESULTS.glob("eval-*.json"))
    rows = [r for path in files for r in rows_of(path, args.task)]
    if not args.all:
        rows = merge_seeds(rows, keys)
        best: dict[str, dict[str, Any]] = {}
        for r in rows:
            if r["method"] not in best or r["metrics"][headline] > best[r["method"]]["metrics"][headline]:
                best[r["method"]] = r
        rows = list(best.values())
    rows.sort(key=lambda r: -r["metrics"][headline])
    print(markdown(rows, keys))


if __name__ == "__main__":
    main()
