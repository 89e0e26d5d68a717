"""The quality of every method's default recipe, measured through the product's own commands.

Every step is a real `ft` command in a subprocess, as a user would type it: `ft init`, `ft models add`,
`ft datasets add` (the test file, plus a seeded validation split carved from the training rows), one
`ft worker` that runs the jobs (`--concurrency` at a time), `ft submit train --method M --name N --seed S`
with no other flag than what picks the variant (bench/recipes.yaml), and `ft submit eval` at its
defaults. The protocol of recipes.yaml: candidates and defaults are scored on validation; the
defaults, at every seed, on test once. The results JSON records the device, versions, git commit,
the command, the recipes, every job's resolved spec (max_source_len, seed and all) and every score.

    python bench/bench_quality.py --gguf /tmp/smollm2.gguf --data ../shared/data --task faults \
        --home /tmp/ftq --concurrency 4                       # everything in recipes.yaml
    python bench/bench_quality.py ... --variants lora,full --seeds 42 --no-candidates
    python bench/bench_quality.py ... --previous bench/results/quality-faults-A.json --redo freeze
    python bench/bench_quality.py --smoke --model-dir DIR --data tests/data --out /tmp/q.json  # CI

The run can be cut and started again with the same --home: what was trained or evaluated is kept, and
jobs still queued or running are waited for (--budget-s bounds one call; exit code 3: call again).
Either way the results of what finished are written, with `complete` false until everything has.
A GPU session too short for the whole table continues in the next one: `--previous` takes the adapters
of earlier results files whose recipes are unchanged (their scores, commit and file are kept in the
report), and the slowest variants (recipes.yaml `minutes`) are started first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(__file__).resolve().parent / "recipes.yaml"
MODEL = "smollm2"
UNFINISHED = 3
"""Exit code when --budget-s ran out before every job finished (call again with the same --home)."""
SMOKE_TRAIN = ["--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--max-len", "256"]
SMOKE_EVAL = ["--limit", "2", "--max-new-tokens", "8"]


def load_recipes(path: Path = RECIPES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


class Ft:
    """Runs `ft ...` in a subprocess against one FT_HOME; every command line is recorded."""

    def __init__(self, home: Path, log: list[str]):
        self.env = {**os.environ, "FT_HOME": str(home), "FT_USER": os.environ.get("FT_USER", "bench")}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH")) if p)
        self.home, self.log = home, log

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.log.append("ft " + " ".join(args))
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args], env=self.env, capture_output=True, text=True
        )
        if check and done.returncode != 0:
            raise SystemExit(f"ft {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args).stdout)

    def start_worker(self, concurrency: int) -> int:
        """A `ft worker` in its own session (it outlives this process; its pid is kept in FT_HOME)."""
        pidfile = self.home / "bench-worker.pid"
        if pidfile.exists() and _alive(int(pidfile.read_text())):
            return int(pidfile.read_text())
        log = open(self.home / "bench-worker.log", "ab")
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "worker",
            "--queues",
            "cpu,gpu",
            "--concurrency",
            str(concurrency),
        ]
        self.log.append(" ".join(["ft", *cmd[3:]]))
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        pidfile.write_text(str(proc.pid))
        return proc.pid

    def stop_worker(self) -> None:
        pidfile = self.home / "bench-worker.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            if _alive(pid):
                os.killpg(pid, signal.SIGTERM)
                for _ in range(300):
                    if not _alive(pid):
                        break
                    time.sleep(0.1)
            pidfile.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of this process counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


class Bench:
    def __init__(self, args: argparse.Namespace, recipes: dict[str, Any]):
        self.args, self.recipes = args, recipes
        self.task = recipes["tasks"][args.task]
        args.home.mkdir(parents=True, exist_ok=True)
        self.state_path = args.home / f"bench-state-{args.task}.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {"jobs": {}}
        )
        self.commands: list[str] = self.state.setdefault("commands", [])
        self.ft = Ft(args.home, self.commands)
        self.seeds: list[int] = args.seeds or recipes["seeds"]
        self.load_previous()

    def save_state(self) -> None:
        self.state_path.write_text(json.dumps(self.state, indent=1))

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        a, t = self.args, self.task
        self.ft("init")
        if self.ft("models", "show", MODEL, check=False).returncode != 0:
            self.ft(
                "models",
                "add",
                MODEL,
                *(["--path", str(a.model_dir)] if a.model_dir else ["--gguf", str(a.gguf)]),
            )
        add = ["datasets", "add", a.task, str(a.data / t["train"]), "--format", t["format"], "--seed", "0"]
        if t.get("test"):
            add += ["--test", str(a.data / t["test"])]
        if t.get("test_rows"):
            add += ["--split", f"test={t['test_rows']}"]
        self.ft(*add, "--split", f"validation={t['validation']}")

    def convert(self) -> None:
        """Tokenise once, before the training jobs start together: with the defaults this is the
        conversion every default training job reuses (a cache hit for each of them)."""
        lengths = ["--max-len", SMOKE_TRAIN[SMOKE_TRAIN.index("--max-len") + 1]] if self.args.smoke else []
        self.ft("submit", "convert", self.args.task, "--model", MODEL, *lengths, "--wait")

    # ------------------------------------------------------------ the runs

    def planned(self) -> list[dict[str, Any]]:
        """Every adapter of this run: all defaults and the candidates at the first seed, the defaults at
        each further seed; the slowest first across seeds (recipes.yaml `minutes`), so the longest jobs
        never start last and a GPU session cut short loses the least (`--previous` continues it)."""
        seeds = self.seeds
        wanted = self.args.variants or list(self.recipes["variants"])
        plan = []
        for i, seed in enumerate(seeds):
            for variant in wanted:
                spec = self.recipes["variants"][variant]
                plan.append({"variant": variant, "default": True, "seed": seed, **spec})
            if i == 0 and not self.args.no_candidates:
                for variant, spec in self.recipes["candidates"].items():
                    if spec["against"] in wanted:
                        plan.append({"variant": variant, "default": False, "seed": seed, **spec})
        for entry in plan:
            entry["name"] = f"{self.args.task}-{entry['variant']}-s{entry['seed']}"
        plan.sort(key=lambda e: -e.get("minutes", 0))  # stable: seed order among equally slow jobs
        return [e for e in plan if e["name"] not in self.previous]

    def load_previous(self) -> None:
        """Adapters scored by earlier runs (`--previous FILE`, e.g. an earlier GPU session's results) that
        this run takes as they are instead of training again: only where that run's recipe of the variant
        and its method's defaults equal today's recipes.yaml, the adapter was scored on every split it
        needs (one trained but cut off before its evaluations trains again: its artifact is gone with
        that machine), and the variant is not in --redo."""
        self.previous: dict[str, dict[str, Any]] = {}
        self.previous_base: dict[str, Any] = {}
        for path in self.args.previous or []:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("task") != self.args.task:
                raise SystemExit(f"{path}: results of task {record.get('task')!r}, not {self.args.task!r}")
            then, now = record["recipes"], self.recipes
            for name, entry in record["adapters"].items():
                variant, method = entry["variant"], entry["method"]
                same = (
                    _recipe(now, variant) is not None  # a variant since removed is not today's recipe
                    and _recipe(then, variant) == _recipe(now, variant)
                    and _method_defaults(then, method) == _method_defaults(now, method, like=then)
                    and {k: v for k, v in then["defaults"].items() if k != "methods"}
                    == {k: v for k, v in now["defaults"].items() if k != "methods"}
                )
                splits = ("validation", "test") if entry["default"] else ("validation",)
                headline = record.get("headline") or ""  # an adapter trained, then cut off unscored: again
                scored = all(entry.get(split) and headline in entry[split] for split in splits)
                if same and scored and variant not in (self.args.redo or []) and name not in self.previous:
                    self.previous[name] = {**entry, "from": path.name, "commit": record.get("commit")}
            for split, metrics in record.get("base", {}).items():
                self.previous_base.setdefault(split, metrics)

    def submit_training(self, entry: dict[str, Any]) -> None:
        cmd = ["submit", "train", "--method", entry["method"], *entry.get("flags", []), "-m", MODEL, "-d",
               self.args.task, "--name", entry["name"], "--seed", str(entry["seed"]), "--json"]  # fmt: skip
        if self.args.smoke:
            cmd += SMOKE_TRAIN
        self.state["jobs"][entry["name"]] = self.ft.json(*cmd)["id"]
        self.save_state()

    def submit_evaluations(self, entry: dict[str, Any]) -> None:
        """An adapter is scored on validation (and, a default, on test) as soon as it is trained; the
        untuned base rides with the first job of each split."""
        for split in ("validation", "test") if entry["default"] else ("validation",):
            key = f"eval {split} {entry['name']}"
            if key in self.state["jobs"]:
                continue
            cmd = ["submit", "eval", entry["name"], "--metric", self.task["metric"],
                   "--dataset", f"{self.args.task}:{split}", "--json"]  # fmt: skip
            if not any(k.startswith(f"eval {split} ") for k in self.state["jobs"]):
                cmd += ["--base", MODEL]
            if self.args.smoke:
                cmd += SMOKE_EVAL
            job = self.ft.json(*cmd)
            self.state["jobs"][key] = job["id"] if isinstance(job, dict) else job[0]["id"]
            self.save_state()

    def run(self, plan: list[dict[str, Any]], deadline: float) -> bool:
        """Keep at most --concurrency training jobs queued or running (the embedded broker is first-in
        first-out, so evaluations submitted as adapters finish run before the rest of the training);
        True when every job is done, False when the deadline came first."""
        done_states = ("succeeded", "failed", "cancelled")
        while True:
            listed = {j["id"]: j for j in self.ft.json("jobs", "list", "--limit", "100000", "--json")}
            jobs = {k: listed[v] for k, v in self.state["jobs"].items() if v in listed}
            failed = {k: j["error"] for k, j in jobs.items() if j["status"] in ("failed", "cancelled")}
            self.state["failed"] = {**self.state.get("failed", {}), **failed}
            for entry in plan:
                if jobs.get(entry["name"], {}).get("status") == "succeeded":
                    self.submit_evaluations(entry)
            training = [e for e in plan if e["name"] in jobs and jobs[e["name"]]["status"] not in done_states]
            for entry in [e for e in plan if e["name"] not in self.state["jobs"]][
                : max(0, self.args.concurrency - len(training))
            ]:
                self.submit_training(entry)
            pending = [e for e in plan if e["name"] not in self.state["jobs"]]
            listed = {j["id"]: j for j in self.ft.json("jobs", "list", "--limit", "100000", "--json")}
            active = {
                k: listed[v] for k, v in self.state["jobs"].items() if listed[v]["status"] not in done_states
            }
            untested = [e for e in plan if jobs.get(e["name"], {}).get("status") == "succeeded"
                        and f"eval validation {e['name']}" not in self.state["jobs"]]  # fmt: skip
            if not pending and not active and not untested:
                if self.state["failed"]:  # reported with the results; the other jobs' results still count
                    failed_json = json.dumps(self.state["failed"], ensure_ascii=False)
                    print(f"jobs failed: {failed_json[:3000]}", flush=True)
                return True
            if time.monotonic() > deadline:
                running = {k: j["progress"] for k, j in active.items() if j["status"] == "running"}
                print(f"not finished yet; running: {json.dumps(running)[:1500]}", flush=True)
                return False
            time.sleep(self.args.poll_s)

    # ------------------------------------------------------------ the report

    def report(self, plan: list[dict[str, Any]]) -> dict[str, Any]:
        headline = ""
        scores: dict[str, dict[str, Any]] = {}
        trained = {a["name"] for a in self.ft.json("adapters", "list", "--json")}
        plan = [e for e in plan if e["name"] in trained]
        for entry in plan:
            evals = self.ft.json("adapters", "evals", entry["name"], "--json")
            headline = headline or next((ev["headline"] for ev in evals if ev["headline"]), "")
            adapter = self.ft.json("adapters", "show", entry["name"], "--json")
            job = self.ft.json("jobs", "show", str(adapter["job_id"]), "--json")
            scores[entry["name"]] = {
                **entry,
                "spec": job["spec"],
                "train_seconds": adapter.get("train_seconds"),
                "peak_train_memory_bytes": adapter.get("peak_memory_bytes"),
                "trainable_params": adapter.get("trainable_params"),
                "total_params": adapter.get("total_params"),
                **{
                    ev["split"]: {
                        **ev["metrics"],
                        "seconds": ev["seconds"],
                        "engine": (ev["generation"] or {}).get("engine"),
                    }
                    for ev in evals
                    if ev["dataset"].startswith(self.args.task)
                },
            }
        wanted = self.args.variants or list(self.recipes["variants"])
        for name, entry in self.previous.items():
            kind = self.recipes["candidates"].get(entry["variant"], {}).get("against", entry["variant"])
            if name not in scores and kind in wanted:
                scores[name] = entry
        base: dict[str, Any] = dict(self.previous_base)
        for split in ("validation", "test") if plan else ():
            data = self.ft.json("adapters", "compare", plan[0]["name"], "--metric", self.task["metric"],
                                "--dataset", f"{self.args.task}:{split}", "--base", "--json")  # fmt: skip
            found = [c for c in data["columns"] if c["kind"] == "base" and c.get("metrics")]
            if found:
                base[split] = found[0]["metrics"]
        rows, selection = [], {}
        order = [*self.recipes["variants"], *self.recipes["candidates"]]
        for variant in sorted({e["variant"] for e in scores.values()}, key=order.index):
            members = sorted(
                (e for e in scores.values() if e["variant"] == variant),
                key=lambda e: self.seeds.index(e["seed"]) if e["seed"] in self.seeds else len(self.seeds),
            )
            scored = "test" if members[0]["default"] else "validation"
            row = {"variant": variant, "method": members[0]["method"], "flags": members[0].get("flags", []),
                   "default": members[0]["default"], "trained_seeds": [m["seed"] for m in members],
                   "seeds": [m["seed"] for m in members if headline in m.get(scored, {})]}  # fmt: skip
            for split in ("validation", "test"):  # an adapter trained but not yet evaluated counts nowhere
                values = [m[split][headline] for m in members if headline in m.get(split, {})]
                if values:
                    row[split] = {"mean": statistics.fmean(values), "values": values,
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0}  # fmt: skip
            row["train_seconds"] = statistics.fmean(m["train_seconds"] or 0 for m in members)
            row["peak_train_memory_gib"] = max((m["peak_train_memory_bytes"] or 0) for m in members) / 2**30
            row["trainable_percent"] = 100 * members[0]["trainable_params"] / members[0]["total_params"]
            rows.append(row)
        for cand, spec in self.recipes["candidates"].items():
            mine = next((r for r in rows if r["variant"] == cand), None)
            default = next((r for r in rows if r["variant"] == spec["against"]), None)
            if mine and default and "validation" in mine and "validation" in default:
                seed42 = default["validation"]["values"][0]
                value = mine["validation"]["mean"]
                selection[cand] = {"against": spec["against"], "candidate": value,
                                   "default_same_seed": seed42, "keep_default": seed42 >= value}  # fmt: skip
        return {"headline": headline, "adapters": scores, "rows": rows, "base": base, "selection": selection,
                "markdown": markdown(rows, base, headline)}  # fmt: skip


def _method_defaults(
    recipes: dict[str, Any], method: str, like: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The method's defaults; with `like` (an earlier run's recipes), without the flags added since: a
    flag that did not exist then cannot have changed that run (give --redo where its default changes the
    variant, as --int8-matmul did lora-int8's)."""
    spec = dict(recipes["defaults"]["methods"][method])
    if like is not None and method in like["defaults"]["methods"]:
        known = like["defaults"]["methods"][method].get("flags", {})
        spec["flags"] = {k: v for k, v in spec.get("flags", {}).items() if k in known}
    return spec


def _recipe(recipes: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """What makes `variant` (its method and flags), without the scheduling hint `minutes`."""
    spec = {**recipes["variants"], **recipes["candidates"]}.get(variant)
    return None if spec is None else {k: v for k, v in spec.items() if k != "minutes"}


def markdown(rows: list[dict[str, Any]], base: dict[str, Any], headline: str) -> str:
    head = (
        f"| variant | command flags | seeds | validation {headline} (mean) | test {headline} mean ± std "
        "| test per seed | train time (s, mean) | peak train mem (GiB) | trainable % |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        if not r["default"]:
            continue
        test, val = r.get("test", {}), r.get("validation", {})
        flags = " ".join(["--method", r["method"], *r["flags"]])
        lines.append(
            f"| {r['variant']} | `{flags}` | "
            f"{', '.join(map(str, r['seeds']))} | {val.get('mean', float('nan')):.4f} | "
            f"{test.get('mean', float('nan')):.4f} ± {test.get('std', float('nan')):.4f} | "
            f"{', '.join(f'{v:.3f}' for v in test.get('values', []))} | {r['train_seconds']:.0f} | "
            f"{r['peak_train_memory_gib']:.1f} | {r['trainable_percent']:.2f} |"
        )
    if base:
        lines.append(
            f"| (untuned) | - | - | {base.get('validation', {}).get(headline, float('nan')):.4f} | "
            f"{base.get('test', {}).get(headline, float('nan')):.4f} | - | - | - | 0 |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    commit = os.environ.get("FT_COMMIT")
    if not commit:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        commit = done.stdout.strip() or None
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },  # fmt: skip
        "commit": commit,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct's GGUF file")
    ap.add_argument("--model-dir", type=Path, help="a model directory instead of --gguf (smoke tests)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--task", choices=["faults", "adgen"], default="faults")
    ap.add_argument("--home", type=Path, default=Path("/tmp/ftq"))
    ap.add_argument("--variants", type=lambda s: s.split(","), help="comma-separated; default: all")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="default: recipes.yaml")
    ap.add_argument("--no-candidates", action="store_true", help="only the defaults")
    ap.add_argument("--concurrency", type=int, default=1, help="jobs the worker runs at once")
    ap.add_argument("--budget-s", type=float, default=0, help="stop waiting after N s (exit 3; 0: no limit)")
    ap.add_argument("--keep-worker", action="store_true", help="leave the worker running (for a next call)")
    ap.add_argument("--poll-s", type=float, default=10, help="seconds between looks at the queue")
    ap.add_argument("--previous", type=Path, action="append", help="an earlier results file whose adapters "
                    "count as done where their recipes equal today's (repeatable)")  # fmt: skip
    ap.add_argument("--redo", type=lambda s: s.split(","), help="variants never taken from --previous")
    ap.add_argument("--smoke", action="store_true", help="2 steps, 2 rows, 8 tokens: check the script runs")
    ap.add_argument("--out", type=Path, help="the results file, or a folder to name it in")
    args = ap.parse_args(argv)
    if not args.gguf and not args.model_dir:
        ap.error("give --gguf FILE or --model-dir DIR")
    variants = load_recipes()["variants"]
    if unknown := [v for v in args.variants or [] if v not in variants]:
        ap.error(f"unknown variants {unknown}; recipes.yaml has {', '.join(variants)}")
    return args


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    recipes = load_recipes()
    bench = Bench(args, recipes)
    deadline = time.monotonic() + (args.budget_s or 1e9)
    bench.setup()
    plan = bench.planned()
    bench.ft.start_worker(args.concurrency)
    try:
        bench.convert()
        # a failed job leaves its rows unscored: the file is partial, so that a later call retries it
        complete = bench.run(plan, deadline) and not bench.state.get("failed")
    finally:
        if not args.keep_worker:
            bench.ft.stop_worker()
    out = args.out or Path(os.environ.get("OUT", ROOT / "bench" / "results")) / f"quality-{args.task}.json"
    record = {
        "command": " ".join(["python", "bench/bench_quality.py", *(sys.argv[1:] if argv is None else argv)]),
        **environment(), "task": args.task, "task_settings": bench.task, "recipes": recipes,
        "concurrency": args.concurrency, "smoke": args.smoke, "complete": complete,
        "ft_commands": bench.commands,
        "failed": bench.state.get("failed", {}),
        "previous": [str(p) for p in args.previous or []],
        **bench.report(plan),
    }  # fmt: skip
    if out.is_dir():
        device = re.sub(r"\W+", "_", record["device"])
        commit = (record["commit"] or "nocommit")[:7]
        out = out / f"quality-{args.task}{'' if complete else '-partial'}-{commit}-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    print(record["markdown"], flush=True)
    print(f"results: {out}" + ("" if complete else " (partial: call again with the same --home)"), flush=True)
    return out if complete else None


if __name__ == "__main__":
    sys.exit(UNFINISHED if main() is None else 0)
