"""Evaluating the models of one `eval` job on one base model: generate for the split, score, save the
predictions (worker/jobs/eval.py registers the results).

The base model is loaded ONCE and each artifact format puts its artifacts on it in turn
(worker/methods/artifacts.py):
1. peft adapters, one PeftModel per peft type (peft cannot mix types in one model). In a LoRA group,
   every adapter that stacks (worker/evaluation/multi_lora.py: plain LoRA on Linear layers) and the
   untuned base are evaluated in ONE pass of shared batches, a batch holding the same prompts for each
   of them, at about the cost of one adapter; one LoRA adapter alone takes the same path. The others
   (DoRA, modules_to_save, ...; the log says why) and the other peft types are evaluated one at a
   time. The group is then unwrapped (LoRA's `unload()` restores the original layers);
2. `freeze` artifacts: their trained tensors are swapped in, and the originals back after;
3. the untuned base on the bare model, unless a LoRA group evaluated it;
4. `full` artifacts are whole models: each is loaded on its own after the base is freed.

Each model gets its predictions artifact (`predictions.jsonl`: input, gold, prediction, per-sample
scores) in the store.
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.models import PromptTemplate
from catalog.store import ArtifactStore, StoredArtifact
from datasets_prep.rows import Row
from worker.evaluation.metrics import Metric, get_metric
from worker.spec import EvalSpec, EvalTarget

PREDICTIONS = "predictions.jsonl"


@dataclass
class Outcome:
    """One model's evaluation, before it is registered."""

    target: EvalTarget
    summary: dict[str, float]
    predictions: list[str]
    seconds: float
    tokens_per_s: float
    new_tokens: int
    peak_memory_bytes: int | None
    artifact: StoredArtifact
    truncated: int
    engine: str = "generate"
    """What decoded (GenerationResult.engine: "graph", "generate", or "graph-eager: <why>")."""


class Evaluator:
    """Generates for, and scores, one model at a time on the job's rows."""

    def __init__(
        self,
        spec: EvalSpec,
        tokenizer: Any,
        rows: list[Row],
        templates: dict[int, PromptTemplate],
        store: ArtifactStore,
        log: logging.Logger,
        report: Callable[[dict[str, Any]], None] = lambda progress: None,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        self.spec, self.tokenizer, self.rows, self.templates = spec, tokenizer, rows, templates
        self.store, self.log, self.report, self.should_stop = store, log, report, should_stop
        self.metric: Metric = get_metric(spec.metric)
        self._prompts: dict[int, tuple[list[str], list[bool]]] = {}
        self.done = 0
        """Targets evaluated so far."""
        self.rows_total = len(rows) * len(spec.targets)
        """Rows the job generates, over every target: what its progress counts."""

    def prompts(self, template: PromptTemplate) -> tuple[list[str], list[bool]]:
        """The rows rendered with `template`, each cut to --max-source-len tokens (start kept)."""
        from datasets_prep.templates import render_prompt

        if template.id not in self._prompts:
            special = template.kind != "chat"
            rendered = [render_prompt(template.kind, template.body, r, self.tokenizer) for r in self.rows]
            cut = [truncate_prompt(self.tokenizer, p, self.spec.max_source_len, special) for p in rendered]
            self._prompts[template.id] = ([p for p, _ in cut], [t for _, t in cut])
        return self._prompts[template.id]

    def run(self, model: Any, target: EvalTarget) -> Outcome:
        """Generate with `model` as it is (one adapter active, or none) and score."""
        return self.run_many(model, [(target, None)])[0]

    def run_many(self, model: Any, targets: list[tuple[EvalTarget, str | None]]) -> list[Outcome]:
        """Several targets of a stacked LoRA model (worker/evaluation/multi_lora.py) in shared batches:
        each row
        carries its adapter's name ("__base__" for the untuned base), and a batch holds --batch-size
        prompts for each target, so N LoRA adapters cost about one generation pass instead of N.
        Targets with different templates are generated separately. A target's seconds are its share
        of the shared pass."""
        outcomes: dict[int, Outcome] = {}
        by_template: dict[int, list[int]] = {}
        for k, (target, _) in enumerate(targets):
            by_template.setdefault(target.template_id, []).append(k)
        for template_id, ks in by_template.items():
            for k, outcome in zip(
                ks, self._run_shared(model, [targets[k] for k in ks], template_id), strict=True
            ):
                outcomes[k] = outcome
        return [outcomes[k] for k in range(len(targets))]

    def _run_shared(
        self, model: Any, targets: list[tuple[EvalTarget, str | None]], template_id: int
    ) -> list[Outcome]:
        from worker.evaluation.generation import GenerationCancelled, GenerationConfig, generate

        if self.should_stop():
            raise GenerationCancelled("cancelled before generating")
        template = self.templates[template_id]
        prompts, truncated = self.prompts(template)
        n, s = len(prompts), self.spec
        cfg = GenerationConfig.of(s.decoding, stop_on_repeated_line=self.metric.stop_on_repeated_line)
        labels = ", ".join(t.label for t, _ in targets)
        position = f"{self.done + 1}-{self.done + len(targets)}/{len(s.targets)}"
        if len(targets) == 1:
            position = f"{self.done + 1}/{len(s.targets)}"

        before, started = self.done * n, time.perf_counter()  # rows of the earlier passes
        where = {"stage": "eval", "adapter": labels, "models": position, "rows_total": self.rows_total}

        def on_progress(p: dict[str, Any]) -> None:
            """Rows done over the whole job (every model), tokens/s, and the ETA at this pass's pace; from
            inside a batch (`batch_step`), the batch counts as decoded that far."""
            done = p["done"] + p.get("batch_rows", 0) * min(p.get("batch_step", 0) / cfg.max_new_tokens, 1.0)
            elapsed = time.perf_counter() - started
            left = self.rows_total - before - done
            progress = {**where, "rows_done": before + p["done"], "tokens_per_s": round(p["tokens_per_s"], 1),
                        "elapsed_s": round(elapsed, 1)}  # fmt: skip
            if done > 0:
                progress["eta_s"] = round(left * elapsed / done, 1)
            if "batch_step" in p:
                progress["decoding"] = f"{p['batch_step']}/{p['max_new_tokens']} of {p['batch_rows']} rows"
            self.report(progress)

        self.log.info("evaluating %s (%s) with template %s", labels, position, template.ref)
        self.report({**where, "rows_done": before})
        names = [name for _, name in targets]
        mixed = None if names == [None] else [name for name in names for _ in range(n)]
        result = generate(
            model, self.tokenizer, prompts * len(targets), cfg, on_progress=on_progress,
            should_stop=self.should_stop, add_special_tokens=template.kind != "chat", adapter_names=mixed,
            on_step=on_progress,
        )  # fmt: skip
        self.report({**where, "stage": "score", "rows_done": before + n * len(targets)})
        gold = [r.gold for r in self.rows]  # every reference of a multi-reference row
        peak = result.peak_memory_bytes if result.peak_memory_bytes is not None else peak_rss_bytes()
        share = result.seconds / len(targets)
        outcomes = []
        for k, (target, _) in enumerate(targets):
            texts = result.texts[k * n : (k + 1) * n]
            scored = self.metric.score(texts, gold)
            artifact = self._save(target, texts, scored.per_sample, truncated)
            self.done += 1
            self.log.info(
                "%s: %s=%s on %d rows, %.1fs (%s), %.1f tok/s, engine %s",
                target.label, self.metric.headline, scored.summary.get(self.metric.headline), n, share,
                "shared batches" if len(targets) > 1 else "alone", result.tokens_per_s, result.engine,
            )  # fmt: skip
            outcomes.append(
                Outcome(
                    target=target, summary=scored.summary, predictions=texts, seconds=share,
                    tokens_per_s=result.tokens_per_s, new_tokens=result.new_tokens // len(targets),
                    peak_memory_bytes=peak, artifact=artifact, truncated=sum(truncated), engine=result.engine,
                )
            )  # fmt: skip
        return outcomes

    def _save(
        self, target: EvalTarget, texts: list[str], scores: list[dict[str, float]], truncated: list[bool]
    ) -> StoredArtifact:
        with self.store.staging() as staged:
            with open(staged / PREDICTIONS, "w", encoding="utf-8") as f:
                for i, (row, text, score, cut) in enumerate(
                    zip(self.rows, texts, scores, truncated, strict=True)
                ):
                    line = {"index": i, "input": row.input, "gold": row.gold, "prediction": text,
                            "scores": score, "truncated": cut}  # fmt: skip
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
            return self.store.commit(staged, "predictions")


def truncate_prompt(
    tokenizer: Any, prompt: str, max_tokens: int, add_special_tokens: bool
) -> tuple[str, bool]:
    """`prompt` cut to its first `max_tokens` tokens (as training's --max-source-len does), and whether
    it was cut. The cut is made in the text, so the prompt stays a string for batched generation."""
    ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    if len(ids) <= max_tokens:
        return prompt, False
    plain = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    keep = max(1, max_tokens - (len(ids) - len(plain["input_ids"])))
    while True:
        if tokenizer.is_fast:
            text = prompt[: plain["offset_mapping"][keep - 1][1]]
        else:
            text = tokenizer.decode(plain["input_ids"][:keep])
        if (
            keep == 1
            or len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]) <= max_tokens
        ):
            return text, True
        keep -= 1  # re-tokenising a cut text can merge differently at the edge


def peak_rss_bytes() -> int:
    """The process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ---------------------------------------------------------------- putting the models on the base


def evaluate_all(
    spec: EvalSpec,
    evaluator: Evaluator,
    base_model_dir: Path,
    artifacts: dict[int, Path],
    *,
    trust_remote_code: bool = False,
) -> tuple[list[Outcome], dict[str, Any]]:
    """Every target's outcome, in the spec's order, and where they ran: device, dtype, how many times
    the base (`base_loads`) and whole models (`model_loads`) were loaded. `artifacts` maps a target's
    index to its artifact directory. Each artifact is verified against the catalog's sha256 first.

    The base is loaded once. Each artifact format puts its artifacts on it a group at a time
    (worker/methods/artifacts.py); a group that can serve plain LoRA adapters in shared batches also
    evaluates the untuned base in that pass. Formats that are whole models load on their own."""
    from catalog.integrity import digest_of, verify_artifact
    from worker.methods import compute_dtype, get_method
    from worker.models.loading import default_device, load_base

    for t in spec.targets:  # every artifact is checked before the first is loaded
        if t.artifact_uri:
            sha256 = t.artifact_sha256 or digest_of(t.artifact_uri)
            verify_artifact(evaluator.store, t.artifact_uri, sha256, f"adapter {t.adapter or t.label}")
    log = evaluator.log
    device = default_device()
    dtype = _dtype(spec.dtype, device, compute_dtype)
    formats = {i: get_method(t.method).artifact for i, t in enumerate(spec.targets) if t.method}
    base_ix = [i for i, t in enumerate(spec.targets) if t.is_base]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, fmt in formats.items():
        if fmt.shares_base:
            groups.setdefault((fmt.kind, fmt.group_of(artifacts[i])), []).append(i)
    outcomes: dict[int, Outcome] = {}
    loads: dict[str, Any] = {"base_loads": 0, "model_loads": 0, "device": str(device)}
    loads["dtype"] = str(dtype).removeprefix("torch.")

    def load(path: Path) -> Any:
        model = load_base(path, device, dtype=dtype, trust_remote_code=trust_remote_code)
        if spec.fused_kernels and device.type == "cuda":
            from worker.train.kernels import apply_fused_kernels

            log.info("%s", apply_fused_kernels(model, loss=False))
        return model

    if base_ix or groups:
        model = load(base_model_dir)
        loads["base_loads"] += 1
        log.info("loaded base model %s on %s (%s) once for this job", spec.model_name, device, dtype)
        for members in groups.values():
            fmt = formats[members[0]]
            on = fmt.put_on(model, {f"adapter_{i}": artifacts[i] for i in members})
            if on.stackable is not None:
                pending = [i for i in base_ix if i not in outcomes]
                outcomes.update(_stacked(evaluator, spec, on, members, pending, loads))
            for i in (i for i in members if i not in outcomes):
                with on.use(f"adapter_{i}") as adapted:
                    outcomes[i] = evaluator.run(adapted, spec.targets[i])
            model = on.close()
            del on
        for i in (i for i in base_ix if i not in outcomes):
            outcomes[i] = evaluator.run(model, spec.targets[i])
        del model
        _free_memory(device)
    for i in (i for i, fmt in formats.items() if not fmt.shares_base):
        model = formats[i].load(base_model_dir, artifacts[i], load_base=load)
        loads["model_loads"] += 1
        outcomes[i] = evaluator.run(model, spec.targets[i])
        del model
        _free_memory(device)
    return [outcomes[i] for i in range(len(spec.targets))], loads


def _stacked(
    evaluator: Evaluator,
    spec: EvalSpec,
    on: Any,
    members: list[int],
    base_ix: list[int],
    loads: dict[str, Any],
) -> dict[int, Outcome]:
    """The outcomes of the group's adapters that stack (worker/evaluation/multi_lora.py: plain LoRA on
    Linear layers), together with the untuned base targets `base_ix`, in ONE pass of shared batches (one
    adapter alone takes the same path, so that one adapter and several run on the same engine). The
    others are left to be evaluated one at a time."""
    from worker.evaluation.multi_lora import BASE, stacked_lora, unstackable_reason

    peft = on.stackable
    stackable = []
    for i in members:
        reason = unstackable_reason(peft, f"adapter_{i}")
        if reason is None:
            stackable.append(i)
        else:
            evaluator.log.info("%s is evaluated on its own, not stacked with other LoRA adapters: %s",
                               spec.targets[i].label, reason)  # fmt: skip
    if not stackable:
        with on.plain() as untuned:
            return {i: evaluator.run(untuned, spec.targets[i]) for i in base_ix}
    shared = stackable + base_ix
    labels = [spec.targets[i].label for i in shared]
    evaluator.log.info("stacked LoRA: %s in shared batches", ", ".join(labels))
    names = {i: f"adapter_{i}" for i in stackable}
    with stacked_lora(peft, list(names.values())) as model:
        together = evaluator.run_many(model, [(spec.targets[i], names.get(i, BASE)) for i in shared])
    if len(shared) > 1:
        loads["shared_batches"] = labels
    return dict(zip(shared, together, strict=True))


def _dtype(name: str, device: Any, compute_dtype: Any) -> Any:
    import torch

    return compute_dtype(device) if name == "auto" else getattr(torch, name)


def _free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
