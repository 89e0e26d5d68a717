"""The generation engine evaluation uses: batched, left-padded, length-sorted generation with a KV cache.

    result = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=256, batch_size=16))
    result.texts  # one completion per prompt, in the prompts' order, prompt not included

Prompts are sorted by token length (longest first, so an out-of-memory batch fails at once rather than
after an hour) and generated `batch_size` at a time with left padding; the texts are put back in the
original order. Rows stop on EOS (the tokenizer's and the model's generation config's) and, with
`stop_on_repeated_line`, on the first line they repeat (see worker/evaluation/stopping.py). Works for a plain
causal LM and for a peft model, prompt-learning methods (prefix tuning, p-tuning) included, and with
per-row `adapter_names` for a stacked LoRA model (worker/evaluation/multi_lora.py): K adapters complete the
same
prompts in shared batches of `batch_size` x K rows.

`generate_one_at_a_time` is the baseline the write-up's script amounted to (one `model.generate` per
prompt, no padding); bench/bench_generation.py compares the two.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftType
from transformers import StoppingCriteriaList

from catalog.errors import InvalidInput
from worker.evaluation.batches import FREE_SHARE, batch_order, plan_batches, row_bytes
from worker.evaluation.decoding import Decoding
from worker.evaluation.graph_decoding import GraphDecoder, TokenPicker, unsupported_reason
from worker.evaluation.hf_decoding import (
    cache_kwarg,
    hf_generation_config,
    model_inputs,
    prompt_learning_type,
)
from worker.evaluation.multi_lora import adapter_rows
from worker.evaluation.stopping import (
    CancelCriteria,
    RepeatedLineCriteria,
    StepReport,
    cut_at_repeated_line,
)
from worker.models.attention import without_cudnn_attention
from worker.models.loading import fallback_pad_token

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


ENGINES = ("auto", "graph", "generate")


class _BatchTooBig(Exception):
    """A graph-loop batch ran out of GPU memory: `generate` splits it in two and goes on."""


class GenerationCancelled(Exception):
    """`should_stop()` returned True; the partial results were discarded."""


@dataclass
class GenerationConfig(Decoding):
    """How to decode: the evaluation's `Decoding` settings (validated there) and two of the engine's own."""

    stop_on_repeated_line: bool = False
    """End a row once it completes a line it already produced, and cut that line from the text; see
    worker/evaluation/stopping.py. The metric decides (triple-f1 does)."""
    static_cache: bool = False
    """A fixed-size KV cache (transformers' "static" cache). On CUDA, transformers then compiles the
    decoding step (torch.compile with CUDA graphs), which removes the per-step launch overhead that
    dominates small models, at a compile per batch shape. Same outputs as the dynamic cache in fp32.
    Off by default: on an H100 a warm step was 3.4x faster, but the compiles (30 s per batch shape)
    made a whole 50-prompt evaluation take 137 s against 62 s (bench/bench_decode_step.py)."""
    ignore_eos: bool = False
    """Decode max_new_tokens for every row, EOS or not: the same work for every engine (benchmarks)."""
    engine: str = "auto"
    """"graph": ft's decoding loop (worker/evaluation/graph_decoding.py: a static cache, and each step
    one CUDA graph replay on a GPU); "generate": transformers' `generate`; "auto": the loop on CUDA
    where it can decode the model, else `generate`."""
    compile_layers: bool = False
    """With the graph loop on CUDA, `torch.compile` each decoder layer first (fewer, fused kernels a
    step, at a compile of tens of seconds a process: worker/evaluation/regional_compile.py)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise InvalidInput(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    @classmethod
    def of(cls, decoding: Decoding, **engine: Any) -> GenerationConfig:
        """The engine's config for an evaluation's decoding settings."""
        return cls(**dataclasses.asdict(decoding), **engine)


@dataclass
class GenerationResult:
    """The completions and what they cost."""

    texts: list[str]
    """One completion per prompt, in the order of the prompts; trailing whitespace stripped."""
    new_tokens: int
    """Tokens generated over all prompts (up to and including each row's EOS; padding not counted)."""
    seconds: float
    tokens_per_s: float
    peak_memory_bytes: int | None
    """Peak CUDA memory allocated during the call; None on CPU."""
    engine: str = "generate"
    """What decoded: "generate", "graph" (CUDA graphs on a GPU, the eager step on a CPU), or "graph-eager:
    <why>" when a capture failed and the loop ran its step eagerly."""
    phases: dict[str, float] | None = None
    """The graph loop's seconds in prefill, first step and the other steps (GraphDecoder.phases)."""


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    add_special_tokens: bool = True,
    adapter_names: Sequence[str] | None = None,
    streamer: Any = None,
    on_step: ProgressFn | None = None,
) -> GenerationResult:
    """Complete every prompt, `cfg.batch_size` at a time; see the module docstring.

    `adapter_names` (one per prompt) runs a stacked LoRA model (`worker.multi_lora.stacked_lora`) with
    a different adapter per row ("__base__" for the untuned base): K adapters in batches of
    `cfg.batch_size` x K rows cost about one adapter's pass. Rows with the same prompt text share a batch
    (a prompt takes about as many tokens under each adapter, so no batch waits on stragglers).

    `on_progress` gets {"done", "total", "tokens_per_s"} after each batch. `on_step` hears from inside
    a batch, every STEP_PROGRESS_EVERY decoding steps or STEP_PROGRESS_SECONDS, whichever is first:
    {"done" (rows of the batches before), "total", "batch_rows", "batch_step", "max_new_tokens",
    "tokens_per_s" (the batch's tokens so far counted)}. `should_stop` is asked
    between batches and about once a second during one; when it returns True this raises
    GenerationCancelled. Pass `add_special_tokens=False` for prompts rendered by a chat template,
    which already hold their special tokens (as training tokenises them). `streamer` (a transformers
    streamer: `put(token_ids)`, `end()`) is fed the tokens of a one-prompt call as they are produced
    (`ft generate`, `ft chat`: worker/evaluation/interactive.py).
    """
    if streamer is not None and len(prompts) != 1:
        raise ValueError(f"a streamer follows one prompt, got {len(prompts)}")
    names = list(adapter_names) if adapter_names is not None else None
    rows = adapter_rows(model) if names is not None else None
    with _generation_session(model, tokenizer, cfg) as session:
        ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"] if prompts else []
        order, per_batch = batch_order(ids, prompts, names, cfg.batch_size)
        models = len(set(names)) if names else 1
        texts: list[str] = [""] * len(ids)
        pending, start = session.batches(order, ids, per_batch, models), 0
        while pending:
            batch = pending.pop(0)
            try:
                with rows.select([names[i] for i in batch]) if rows is not None and names else nullcontext():
                    hook = (
                        None if on_step is None else StepReport(on_step, session, start, len(batch), len(ids))
                    )
                    done = session.run([ids[i] for i in batch], should_stop, streamer, on_step=hook)
            except _BatchTooBig:  # the graph loop's memory plan was short: the batch in two halves
                half = max(models, len(batch) // 2 // models * models)
                pending[:0] = [batch[:half], batch[half:]]
                continue
            for i, text in zip(batch, done, strict=True):
                texts[i] = text
            start += len(batch)
            if on_progress is not None:
                on_progress({"done": start, "total": len(ids), **session.rate()})
    return session.result(texts)


def generate_one_at_a_time(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    add_special_tokens: bool = True,
) -> GenerationResult:
    """The unbatched baseline: one `model.generate` per prompt, in order, no padding.

    Decoding settings (EOS, sampling, repeated-line stop) are those of `generate`; only batching
    differs, so a benchmark measures batching alone. `cfg.batch_size` is ignored.
    """
    with _generation_session(model, tokenizer, cfg) as session:
        texts = [
            session.run([tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]], None)[0]
            for prompt in prompts
        ]
    return session.result(texts)


# ---------------------------------------------------------------- internals


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS id plus those of the model's generation config, deduplicated, in order."""
    found: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        candidates.append(gen_cfg.eos_token_id)
    for value in candidates:
        values = value if isinstance(value, list | tuple) else [value]
        found += [int(v) for v in values if v is not None and int(v) not in found]
    return found


def _input_device(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


@contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    """Left padding, and a pad token (EOS when there is none), for the duration; both restored."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    tokenizer.pad_token = fallback_pad_token(tokenizer)
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


@contextmanager
def _generation_session(model: Any, tokenizer: Any, cfg: GenerationConfig) -> Iterator[_Session]:
    """Eval mode, inference mode, left padding, no cuDNN attention (worker/models/attention.py) and a seeded
    private RNG; all undone on exit."""
    device = _input_device(model)
    cuda = device.type == "cuda"
    was_training = model.training
    model.eval()
    try:
        with (
            _left_padding(tokenizer),
            torch.inference_mode(),
            without_cudnn_attention(),
            torch.random.fork_rng(devices=[device] if cuda else []),
        ):
            torch.manual_seed(cfg.seed)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            session = _Session(model, tokenizer, cfg, device)
            yield session
            session.finish()
    finally:
        model.train(was_training)


class _Session:
    """One generate() call's fixed state (device, decoding config, EOS ids) and running totals."""

    def __init__(self, model: Any, tokenizer: Any, cfg: GenerationConfig, device: torch.device) -> None:
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.eos = [] if cfg.ignore_eos else eos_token_ids(model, tokenizer)
        self.pad_id = int(tokenizer.pad_token_id)
        self.hf_config = hf_generation_config(cfg, cfg.static_cache, self.eos, self.pad_id)
        self.prompt_learning = prompt_learning_type(model)
        self.cache_kwarg = cache_kwarg(model)
        self.decoder = self._graph_decoder()
        self.new_tokens = 0
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self.peak: int | None = None

    def _graph_decoder(self) -> GraphDecoder | None:
        """The fast loop when the config's engine asks for it and it can decode this model."""
        cfg, cuda = self.cfg, self.device.type == "cuda"
        if cfg.engine == "generate" or (cfg.engine == "auto" and (not cuda or cfg.static_cache)):
            return None
        reason = unsupported_reason(self.model, streamer=None, auto=cfg.engine == "auto")
        if reason is not None:
            if cfg.engine == "graph":
                raise InvalidInput(f"the graph decoding engine cannot decode with {reason}")
            return None
        if cfg.compile_layers and cuda:
            from worker.evaluation.regional_compile import compile_layers

            compile_layers(self.model)
        return GraphDecoder(
            self.model,
            max_new_tokens=cfg.max_new_tokens,
            eos=self.eos,
            pad_id=self.pad_id,
            picker=TokenPicker(cfg.sample, cfg.temperature, cfg.top_p),
            graphs=True,
            cache_kwarg=self.cache_kwarg,
            prompt_learning=self.prompt_learning,
        )

    def batches(self, order: list[int], ids: list[list[int]], per_batch: int, models: int) -> list[list[int]]:
        """`order` in batches of `per_batch` rows; with the graph loop on a GPU, as many rows as its
        free memory holds (worker/evaluation/graph_batches.py)."""
        if self.decoder is None or self.device.type != "cuda":
            return [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        config, max_new = self.decoder.config, self.cfg.max_new_tokens
        size = self.model.get_input_embeddings().weight.element_size()
        extra = int(getattr(getattr(self.model, "active_peft_config", None), "num_virtual_tokens", 0) or 0)
        budget = int(FREE_SHARE * torch.cuda.mem_get_info(self.device)[0])
        return plan_batches(
            order, [len(row) for row in ids], budget=budget, multiple=models,
            bytes_for=lambda n: row_bytes(config, n + extra, max_new, size),
        )  # fmt: skip

    def run(
        self,
        batch_ids: list[list[int]],
        should_stop: StopFn | None,
        streamer: Any = None,
        *,
        on_step: StepReport | None = None,
    ) -> list[str]:
        """Generate for one batch of token-id lists; returns the cleaned texts in the batch's order.
        `on_step` hears how far the batch has decoded while it runs."""
        if should_stop is not None and should_stop():
            raise GenerationCancelled("generation was cancelled")
        enc = self.tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
        input_ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        try:
            if self.decoder is not None and streamer is None:
                return self._run_graph(input_ids, mask, should_stop, on_step)
            return self._run_generate(input_ids, mask, should_stop, streamer, on_step)
        except torch.cuda.OutOfMemoryError as exc:
            if self.decoder is not None and len(batch_ids) > 1:
                torch.cuda.empty_cache()
                raise _BatchTooBig from exc
            raise InvalidInput(
                f"out of memory generating {len(batch_ids)} rows of up to {input_ids.shape[1]} tokens "
                f"(+{self.cfg.max_new_tokens} new): lower --batch-size or --max-new-tokens"
            ) from exc

    def _run_graph(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        should_stop: StopFn | None,
        on_step: StepReport | None,
    ) -> list[str]:
        repeated = RepeatedLineCriteria(self.tokenizer, self.eos) if self.cfg.stop_on_repeated_line else None
        cancel = CancelCriteria(should_stop) if should_stop is not None else None

        if on_step is not None:
            on_step.watching(0, self.pad_id)  # the loop's rows hold new tokens only, pads after an end

        def look(steps: int, tokens: torch.Tensor) -> bool:
            if on_step is not None:
                on_step.at(steps, tokens)
            return cancel is not None and bool(cancel(tokens)[0])

        out = self.decoder.run(input_ids, mask, repeated=repeated, on_look=look)
        if cancel is not None and cancel.cancelled:
            raise GenerationCancelled("generation was cancelled")
        return [self._finish_row(row) for row in out]

    def _run_generate(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        should_stop: StopFn | None,
        streamer: Any,
        on_step: StepReport | None,
    ) -> list[str]:
        if self.prompt_learning == PeftType.PREFIX_TUNING and self.cfg.static_cache:
            raise InvalidInput("a prefix-tuning adapter cannot decode with the static cache")
        generate_fn, inputs, prompt_len = model_inputs(
            self.model, self.prompt_learning, input_ids, mask, self.pad_id, self.cache_kwarg
        )
        criteria = StoppingCriteriaList()
        if self.cfg.stop_on_repeated_line:
            criteria.append(RepeatedLineCriteria(self.tokenizer, self.eos))
        cancel = CancelCriteria(should_stop) if should_stop is not None else None
        if cancel is not None:
            criteria.append(cancel)
        if on_step is not None:
            criteria.append(on_step.watching(prompt_len, self.pad_id))
        streaming = {"streamer": streamer} if streamer is not None else {}
        out = generate_fn(**inputs, generation_config=self.hf_config, stopping_criteria=criteria, **streaming)
        if cancel is not None and cancel.cancelled:
            raise GenerationCancelled("generation was cancelled")
        return [self._finish_row(row) for row in out[:, prompt_len:].tolist()]

    def _finish_row(self, generated: list[int]) -> str:
        """Count a row's real tokens and turn them into the returned text."""
        n = len(generated)
        for i, token in enumerate(generated):
            if token in self.eos:
                n = i + 1
                break
        else:
            # After a stopping criterion ended the row, transformers pads it with pad_token_id.
            while n and generated[n - 1] == self.pad_id:
                n -= 1
        self.new_tokens += n
        text = self.tokenizer.decode(generated[:n], skip_special_tokens=True)
        if self.cfg.stop_on_repeated_line:
            text = cut_at_repeated_line(text)
        return text.rstrip()

    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.perf_counter() - self.started

    def rate(self) -> dict[str, float]:
        return {"tokens_per_s": self.new_tokens / max(self.elapsed(), 1e-9)}

    def finish(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        self.seconds = time.perf_counter() - self.started

    def result(self, texts: list[str]) -> GenerationResult:
        seconds = self.elapsed()
        return GenerationResult(
            texts=texts,
            new_tokens=self.new_tokens,
            seconds=seconds,
            tokens_per_s=self.new_tokens / max(seconds, 1e-9),
            peak_memory_bytes=self.peak,
            engine=self._engine(),
            phases={k: round(v, 3) for k, v in self.decoder.phases.items()} if self.decoder else None,
        )

    def _engine(self) -> str:
        if self.decoder is None:
            return "generate"
        error = self.decoder.graph_error
        return "graph" if error is None else f"graph-eager: {error}"
