"""The `eval` job: generate for a dataset split with each model of the spec, score, register.

All models of one job share one base model, which is loaded ONCE:
1. on the bare base: the untuned base (unless a LoRA-type group below evaluates it), then each
   `freeze` adapter: its trained tensors are swapped in, and the originals swapped back after;
2. peft adapters, one PeftModel per peft type (peft cannot mix types in one model): the first
   adapter with `PeftModel.from_pretrained(base, path, adapter_name=...)`, the rest with
   `load_adapter`. In the LoRA group, every adapter that stacks (worker/multi_lora.py: plain LoRA
   on Linear layers) and the untuned base are evaluated in ONE pass of shared batches, a batch
   holding the same prompts for each of them, at about the cost of one adapter; one LoRA adapter
   alone takes the same path. The others (DoRA, modules_to_save, ...; the log says why) and the
   other peft types are evaluated one at a time after `set_adapter`. The group is then unwrapped
   (`unload()` for LoRA, which restores the original layers) before the next;
3. `full` adapters are complete models: each is loaded on its own after the base is freed.

Each model gets its predictions artifact (`predictions.jsonl`: input, gold, prediction, per-sample
scores) in the store; the evaluation rows are inserted in the transaction that ends the job.
"""

from __future__ import annotations

import gc
import itertools
import json
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from catalog.errors import InvalidInput
from catalog.evaluations import register_evaluation
from catalog.models import BaseModel, Dataset, Evaluation, PromptTemplate
from catalog.store import StoredArtifact
from datasets_prep.rows import Row
from worker.eval_spec import EvalSpec, EvalTarget
from worker.handlers import HANDLERS, Finish, JobCancelled, JobContext
from worker.metrics import Metric, get_metric

PREDICTIONS = "predictions.jsonl"
LORA_LIKE = ("LORA",)
"""peft types whose PeftModel can evaluate the untuned base with `disable_adapter()`."""


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


class Evaluator:
    """Generates for, and scores, one model at a time on the job's rows."""

    def __init__(self, ctx: JobContext, spec: EvalSpec, tokenizer: Any, rows: list[Row]):
        self.ctx, self.spec, self.tokenizer, self.rows = ctx, spec, tokenizer, rows
        self.metric: Metric = get_metric(spec.metric)
        with ctx.catalog.session() as s:
            self.templates = {t.template_id: s.get_one(PromptTemplate, t.template_id) for t in spec.targets}
        self._prompts: dict[int, tuple[list[str], list[bool]]] = {}
        self.done = 0

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
        """Several targets of a stacked LoRA model (worker/multi_lora.py) in shared batches: each row
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
        from worker.generation import GenerationCancelled, GenerationConfig, generate

        self.ctx.raise_if_cancelled()
        template = self.templates[template_id]
        prompts, truncated = self.prompts(template)
        n, s = len(prompts), self.spec
        cfg = GenerationConfig(
            max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, sample=s.sample,
            temperature=s.temperature, top_p=s.top_p, seed=s.seed,
            stop_on_repeated_line=self.metric.stop_on_repeated_line,
        )  # fmt: skip
        labels = ", ".join(t.label for t, _ in targets)
        position = f"{self.done + 1}-{self.done + len(targets)}/{len(s.targets)}"
        if len(targets) == 1:
            position = f"{self.done + 1}/{len(s.targets)}"

        def on_progress(p: dict[str, Any]) -> None:
            self.ctx.report({
                "stage": "eval", "adapter": labels, "models": position, "done": p["done"],
                "total": p["total"], "rows_done": p["done"], "rows_total": p["total"],
                "tokens_per_s": round(p["tokens_per_s"], 1),
            })  # fmt: skip

        self.ctx.log.info("evaluating %s (%s) with template %s", labels, position, template.ref)
        names = [name for _, name in targets]
        mixed = None if names == [None] else [name for name in names for _ in range(n)]
        try:
            result = generate(
                model, self.tokenizer, prompts * len(targets), cfg, on_progress=on_progress,
                should_stop=self.ctx.cancelled, add_special_tokens=template.kind != "chat",
                adapter_names=mixed,
            )  # fmt: skip
        except GenerationCancelled:
            raise JobCancelled(f"job {self.ctx.job.id} cancelled while evaluating {labels}") from None
        gold = [r.output for r in self.rows]
        peak = result.peak_memory_bytes if result.peak_memory_bytes is not None else peak_rss_bytes()
        share = result.seconds / len(targets)
        outcomes = []
        for k, (target, _) in enumerate(targets):
            texts = result.texts[k * n : (k + 1) * n]
            scored = self.metric.score(texts, gold)
            artifact = self._save(target, texts, scored.per_sample, truncated)
            self.done += 1
            self.ctx.log.info(
                "%s: %s=%s on %d rows, %.1fs (%s), %.1f tok/s",
                target.label, self.metric.headline, scored.summary.get(self.metric.headline), n, share,
                "shared batches" if len(targets) > 1 else "alone", result.tokens_per_s,
            )  # fmt: skip
            outcomes.append(
                Outcome(
                    target=target, summary=scored.summary, predictions=texts, seconds=share,
                    tokens_per_s=result.tokens_per_s, new_tokens=result.new_tokens // len(targets),
                    peak_memory_bytes=peak, artifact=artifact, truncated=sum(truncated),
                )
            )  # fmt: skip
        return outcomes

    def _save(
        self, target: EvalTarget, texts: list[str], scores: list[dict[str, float]], truncated: list[bool]
    ) -> StoredArtifact:
        with self.ctx.store.staging() as staged:
            with open(staged / PREDICTIONS, "w", encoding="utf-8") as f:
                for i, (row, text, score, cut) in enumerate(
                    zip(self.rows, texts, scores, truncated, strict=True)
                ):
                    line = {"index": i, "input": row.input, "gold": row.output, "prediction": text,
                            "scores": score, "truncated": cut}  # fmt: skip
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
            return self.ctx.store.commit(staged, "predictions")


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


# ---------------------------------------------------------------- switching models


def artifact_kind(method: str) -> str:
    from worker.methods import get_method

    return get_method(method).artifact


def peft_type(artifact: Path) -> str:
    config = artifact / "adapter_config.json"
    if not config.is_file():
        raise InvalidInput(f"{artifact} holds no peft adapter (adapter_config.json is missing)")
    return str(json.loads(config.read_text())["peft_type"])


@contextmanager
def freeze_applied(model: Any, artifact: Path) -> Iterator[Any]:
    """The base with a freeze artifact's trained tensors swapped in; the originals are put back after."""
    import torch

    from worker.adapter_io import FREEZE_MANIFEST, apply_freeze

    manifest = artifact / FREEZE_MANIFEST
    if not manifest.is_file():
        raise InvalidInput(f"{artifact} holds no freeze artifact ({FREEZE_MANIFEST} is missing)")
    params = dict(model.named_parameters())
    names = [n for n in json.loads(manifest.read_text())["parameters"] if n in params]
    originals = {n: params[n].detach().clone() for n in names}
    try:
        apply_freeze(model, artifact)  # validates names and shapes, then copies
        yield model
    finally:
        with torch.no_grad():
            for name, tensor in originals.items():
                params[name].copy_(tensor)


def evaluate_all(
    ctx: JobContext, spec: EvalSpec, evaluator: Evaluator
) -> tuple[list[Outcome], dict[str, Any]]:
    """Every target's outcome, in the spec's order, and where they ran: device, dtype, how many times
    the base (`base_loads`) and full models (`model_loads`) were loaded."""
    from peft import PeftModel

    from worker.base_models import model_dir
    from worker.methods import compute_dtype
    from worker.model_loading import default_device, load_base

    with ctx.catalog.session() as s:
        base = s.get_one(BaseModel, spec.base_model_id)
    device = default_device()
    dtype = _dtype(spec.dtype, device, compute_dtype)
    targets = list(enumerate(spec.targets))
    paths = {i: ctx.store.path(t.artifact_uri) for i, t in targets if t.artifact_uri}
    kinds = {i: artifact_kind(t.method) for i, t in targets if t.method}
    groups: dict[str, list[int]] = {}
    for i in (i for i, _ in targets if kinds.get(i) == "peft"):
        groups.setdefault(peft_type(paths[i]), []).append(i)
    base_ix = [i for i, t in targets if t.is_base]
    lora_group = next((g for g in groups if g in LORA_LIKE), None)
    outcomes: dict[int, Outcome] = {}
    loads: dict[str, Any] = {"base_loads": 0, "model_loads": 0, "device": str(device)}
    loads["dtype"] = str(dtype).removeprefix("torch.")

    if any(kinds.get(i) != "full" for i, _ in targets):
        model = load_base(
            model_dir(ctx.store, base), device, dtype=dtype, trust_remote_code=base.trust_remote_code
        )
        loads["base_loads"] += 1
        ctx.log.info("loaded base model %s on %s (%s) once for this job", base.name, device, dtype)
        if lora_group is None:
            for i in base_ix:
                outcomes[i] = evaluator.run(model, spec.targets[i])
        for i in (i for i, _ in targets if kinds.get(i) == "freeze"):
            with freeze_applied(model, paths[i]):
                outcomes[i] = evaluator.run(model, spec.targets[i])
        for group, members in groups.items():
            names = {i: f"adapter_{i}" for i in members}
            peft = PeftModel.from_pretrained(model, paths[members[0]], adapter_name=names[members[0]])
            for i in members[1:]:
                peft.load_adapter(paths[i], adapter_name=names[i])
            if group == lora_group:
                outcomes.update(evaluate_lora_group(ctx, spec, evaluator, peft, names, base_ix, loads))
                model = peft.unload()
            else:
                for i in members:
                    peft.set_adapter(names[i])
                    outcomes[i] = evaluator.run(peft, spec.targets[i])
                model = peft.get_base_model()
            del peft
        del model
        _free_memory(device)
    for i in (i for i, _ in targets if kinds.get(i) == "full"):
        model = load_base(paths[i], device, dtype=dtype, trust_remote_code=base.trust_remote_code)
        loads["model_loads"] += 1
        outcomes[i] = evaluator.run(model, spec.targets[i])
        del model
        _free_memory(device)
    return [outcomes[i] for i, _ in targets], loads


def evaluate_lora_group(
    ctx: JobContext,
    spec: EvalSpec,
    evaluator: Evaluator,
    peft: Any,
    names: dict[int, str],
    base_ix: list[int],
    loads: dict[str, Any],
) -> dict[int, Outcome]:
    """The outcomes of a LoRA PeftModel's adapters (`names`: target index -> peft adapter name) and of
    the untuned base targets `base_ix`.

    The adapters that stack, and the base, share one pass (worker/multi_lora.py): one adapter alone
    too, so that one adapter and several run on the same engine. The rest are evaluated one at a time
    through peft, and the base through `disable_adapter()` when no adapter stacks."""
    from worker.multi_lora import BASE, stacked_lora, unstackable_reason

    outcomes: dict[int, Outcome] = {}
    stackable = []
    for i, name in names.items():
        reason = unstackable_reason(peft, name)
        if reason is None:
            stackable.append(i)
        else:
            ctx.log.info("%s is evaluated on its own, not stacked with other LoRA adapters: %s",
                         spec.targets[i].label, reason)  # fmt: skip
    if stackable:
        shared = stackable + base_ix
        labels = [spec.targets[i].label for i in shared]
        ctx.log.info("stacked LoRA: %s in shared batches", ", ".join(labels))
        with stacked_lora(peft, [names[i] for i in stackable]) as model:
            together = evaluator.run_many(model, [(spec.targets[i], names.get(i, BASE)) for i in shared])
        outcomes.update(zip(shared, together, strict=True))
        if len(shared) > 1:
            loads["shared_batches"] = labels
    for i in (i for i in names if i not in outcomes):
        peft.set_adapter(names[i])
        outcomes[i] = evaluator.run(peft, spec.targets[i])
    pending = [i for i in base_ix if i not in outcomes]
    with peft.disable_adapter():
        for i in pending:
            outcomes[i] = evaluator.run(peft, spec.targets[i])
    return outcomes


def _dtype(name: str, device: Any, compute_dtype: Any) -> Any:
    import torch

    return compute_dtype(device) if name == "auto" else getattr(torch, name)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the handler


@HANDLERS.register("eval")
def run_eval(ctx: JobContext) -> Finish:
    from datasets_prep.canonical import load_split
    from worker.base_models import load_tokenizer

    spec = EvalSpec.from_json(ctx.job.spec)
    with ctx.catalog.session() as s:
        base = s.get_one(BaseModel, spec.base_model_id)
        dataset = s.get_one(Dataset, spec.dataset_id)
    rows = list(itertools.islice(load_split(ctx.store, dataset, spec.split), spec.limit))
    if not rows:
        raise InvalidInput(f"dataset {dataset.ref} split {spec.split!r} has no rows to evaluate")
    ctx.log.info(
        "evaluating %d model(s) on %s:%s (%d rows) with %s",
        len(spec.targets), spec.dataset_ref, spec.split, len(rows), spec.metric,
    )  # fmt: skip
    evaluator = Evaluator(ctx, spec, load_tokenizer(ctx.store, base), rows)
    outcomes, loads = evaluate_all(ctx, spec, evaluator)
    headline = evaluator.metric.headline
    settings = {**spec.generation_settings(), "device": loads["device"], "dtype": loads["dtype"]}

    def finish(session: Session) -> dict[str, Any]:
        done = []
        for o in outcomes:
            metrics = {**o.summary, "tokens_per_s": round(o.tokens_per_s, 2), "new_tokens": o.new_tokens}
            ev = register_evaluation(
                session,
                Evaluation(
                    adapter_id=o.target.adapter_id, base_model_id=spec.base_model_id,
                    dataset_id=spec.dataset_id, split=spec.split, template_id=o.target.template_id,
                    metric=spec.metric, metrics=metrics,
                    generation={**settings, "truncated_prompts": o.truncated},
                    sample_count=len(o.predictions), seconds=o.seconds, peak_memory_bytes=o.peak_memory_bytes,
                    predictions_uri=o.artifact.uri, predictions_sha256=o.artifact.sha256, job_id=ctx.job.id,
                    created_by=ctx.job.submitted_by,
                ),
            )  # fmt: skip
            done.append({"id": ev.id, "model": o.target.label, "adapter": o.target.adapter,
                         headline: o.summary.get(headline), "samples": len(o.predictions)})  # fmt: skip
        scores = ", ".join(f"{d['model']} {headline}={_number(d[headline])}" for d in done)
        return {
            "evaluation_ids": [d["id"] for d in done],
            "evaluations": done,
            "metric": spec.metric,
            "dataset": f"{spec.dataset_ref}:{spec.split}",
            "scores": scores,
            **loads,
        }

    return finish
