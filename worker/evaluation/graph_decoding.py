"""The fast decoding loop: a static KV cache and, on CUDA, each decoding step replayed as one CUDA graph.

A small model on a GPU decodes at the speed of Python and kernel launches, not of the GPU: transformers'
`generate` spends ~20 ms a step of a 135M model in logits processors, stopping criteria, cache and mask
bookkeeping and ~500 separate launches (bench/results/generation-*.json). Here one batch is:

1. prefill: the left-padded prompts in one forward into a `StaticCache` of prompt + max_new_tokens
   slots, with a 4-D additive mask made here (causal, padding, and the empty slots masked) and position
   ids counted from each row's first real token, as `generate` counts them;
2. decoding: every step feeds one token per row. The step (write this step's mask column, the forward,
   advance the positions) touches only tensors that live as long as the batch, so on CUDA it is captured
   once per batch as a CUDA graph and then replayed: one launch a step. Choosing the next token (greedy,
   or transformers' own temperature and top-p warpers and `multinomial`), EOS and the padding of finished
   rows run outside the graph, on the GPU, without a host sync;
   The step's attention is two matmuls per bucket of rows, each bucket over the cache slots its rows
   use (worker/evaluation/bucketed_attention.py), and the prefill runs in groups of rows over their own
   slots, not the padding the longest prompt forced on all (worker/evaluation/grouped_prefill.py);
3. every CHECK_EVERY steps the host looks: stop when every row is done, ask `should_stop`, report
   progress, and feed the new tokens to the repeated-line stop (worker/evaluation/stopping.py), which
   then finds the exact token a row stopped at, so texts and token counts equal `generate`'s.

Written here, not taken from a library: transformers' own static-cache path compiles the step
(torch.compile, ~30 s per batch shape: a 50-prompt evaluation took longer than without it), its
continuous batching (`generate_batch`) decoded at 540 tok/s on an H100, and vLLM serves neither ft's
stacked LoRA adapters nor its freeze swaps. A CUDA graph needs no compiler, captures in milliseconds,
and runs whatever modules the model holds (peft LoRA, stacked LoRA with its per-row mask fixed for the
batch, swapped freeze blocks). The model's own modules and transformers' `StaticCache` do the maths,
so outputs follow the model (greedy outputs equal `generate`'s in fp32: tests/worker/evaluation/).
Sampled outputs equal `generate`'s while no batch ends before its last step; one that ends early has
run up to CHECK_EVERY - 1 steps more, whose draws move the RNG, so later batches draw other (still
seeded, reproducible) samples.

Prompt-learning adapters decode as worker/evaluation/hf_decoding.py feeds them to `generate`: virtual-
token embeddings before the prompt's (p-tuning, prompt tuning), or the trained key/value prefix in the
cache's first slots (prefix tuning). What it does not take (the caller falls back to `generate`):
attention implementations that take no 4-D mask (flash-attention), a streamer, and models whose
forward has no `logits_to_keep`.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft import PeftType
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import StaticCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from worker.evaluation.bucketed_attention import align, buckets, plan_buckets
from worker.evaluation.grouped_prefill import additive_mask, grouped_prefill, prefill_mask
from worker.evaluation.stopping import RepeatedLineCriteria
from worker.models.attention import WITHOUT_CUDNN

CHECK_EVERY = 8
"""Decoding steps between two looks from the host (a sync): stop when all rows are done, cancellation,
progress, the repeated-line stop. More steps a look let the host run further ahead of the GPU; the
extra steps a finished batch runs are at most this many."""
MASKED_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take the 4-D additive mask built here."""

ATTENTION = [SDPBackend.CUDNN_ATTENTION, *WITHOUT_CUDNN]
"""The SDPA kernels the loop allows where it still calls SDPA: a prefill in one forward (one group, or a
prompt-learning adapter's batch) has one fixed shape, so cuDNN plans once a batch (+25% and +17% for
the loop when its steps went through SDPA, bench/results/fast-decoding-NVIDIA_H200-bd34cbe.json). The
steps attend by two matmuls (worker/evaluation/bucketed_attention.py), the prefill's groups without
cuDNN (worker/evaluation/grouped_prefill.py)."""

StepHook = Callable[[int, torch.Tensor], bool]
"""Called at each look with (steps so far, the tokens so far, rows x steps, on the host); returning
True stops the batch (cancellation)."""


def unsupported_reason(model: Any, *, streamer: Any, auto: bool = False) -> str | None:
    """Why this loop cannot decode for `model` (then the caller uses transformers' `generate`), or None.
    `auto` (the engine was not asked for by name) also leaves out bitsandbytes-quantized bases: their
    kernels have not been measured under CUDA graphs yet (LLM.int8 syncs with the host, so its capture
    would fail and the loop would run eagerly)."""
    if streamer is not None:
        return "a streamer"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if auto and (getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None):
        return "a quantized base (not measured under CUDA graphs yet)"
    sliding = [type(layer).__name__ for layer in StaticCache(config=base.config, max_cache_len=8).layers]
    if any(name != "StaticLayer" for name in sliding):  # a window cache keeps fewer slots than the mask
        return f"a cache of {sorted(set(sliding) - {'StaticLayer'})[0]} layers (sliding-window attention)"
    attention = getattr(base.config, "_attn_implementation", None)
    if attention not in MASKED_ATTENTION:
        return f"attention implementation {attention!r}"
    if "logits_to_keep" not in inspect.signature(type(base).forward).parameters:
        return f"{type(base).__name__}.forward has no logits_to_keep"
    return None


class TokenPicker:
    """The next token from the last position's logits: greedy, or sampled as transformers samples
    (temperature, then top-p, then `multinomial` on the softmax), from the torch RNG the caller seeded."""

    def __init__(self, sample: bool, temperature: float, top_p: float) -> None:
        self.sample = sample
        self.warpers = []
        if sample:
            if temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        if not self.sample:
            return scores.argmax(-1)
        for warp in self.warpers:
            scores = warp(None, scores)
        return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)


class GraphDecoder:
    """Decodes batches of left-padded prompts for one model (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        *,
        max_new_tokens: int,
        eos: Sequence[int],
        pad_id: int,
        picker: TokenPicker,
        graphs: bool,
        cache_kwarg: str = "cache",
        prompt_learning: PeftType | None = None,
    ) -> None:
        """`prompt_learning`: the peft type of `model`'s prompt-learning adapter (p-tuning, prompt or
        prefix tuning), whose base then runs the forward passes; None for every other model."""
        self.prompt_learning, self.peft = prompt_learning, model
        if prompt_learning is not None:
            model = model.base_model
        self.model, self.max_new, self.pad_id, self.pick, self.graphs = (
            model,
            max_new_tokens,
            pad_id,
            picker,
            graphs,
        )
        self.cache_kwarg = cache_kwarg
        self.config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
        self.eos = list(eos)
        self.captured = 0
        """Batches decoded with a captured CUDA graph (what a bench reports)."""
        self.buckets = 1
        """Buckets of rows the last batch's step attended in (worker/evaluation/bucketed_attention.py)."""
        self.phases: dict[str, float] = {}
        """Seconds over the batches in "prefill", "first_step" (eager warm-up and capture) and "steps"
        (the rest of decoding): where a bench's time went."""
        self.graph_error: str | None = None
        """Why a capture failed (that batch then decoded eagerly), if one did."""

    def run(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        *,
        repeated: RepeatedLineCriteria | None = None,
        on_look: StepHook | None = None,
    ) -> list[list[int]]:
        """The generated tokens of each row (max_new_tokens of them; after a row's end, pad ids)."""
        with sdpa_kernel(ATTENTION):
            return self._run(input_ids, mask, repeated, on_look)

    def _run(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        repeated: RepeatedLineCriteria | None,
        on_look: StepHook | None,
    ) -> list[list[int]]:
        rows, device = input_ids.shape[0], input_ids.device
        dtype = self.model.get_input_embeddings().weight.dtype
        inputs, mask, prefix = self._prompt_inputs(input_ids, mask, dtype)
        lead = prefix.get_seq_length() if prefix is not None else 0  # the prefix's slots come first
        prompt_len = mask.shape[1]
        slots = align(lead + prompt_len + self.max_new)  # aligned rows: a bucket's views stay aligned
        cache = StaticCache(config=self.config, max_cache_len=slots)
        for layer, cached in enumerate(prefix.layers if prefix is not None else ()):
            cache.update(cached.keys.to(dtype), cached.values.to(dtype), layer)
        attend = torch.zeros((rows, slots), dtype=torch.bool, device=device)
        attend[:, :lead] = True
        attend[:, lead : lead + prompt_len] = mask.bool()
        positions = (attend[:, : lead + prompt_len].long().cumsum(-1) - 1).clamp(min=0)[:, lead:]
        started = time.perf_counter()
        logits = None
        if prefix is None and "input_ids" in inputs:  # rows in groups, each over its own slots
            ids = inputs["input_ids"]
            logits = grouped_prefill(self.model, ids, attend, positions, cache, self.cache_kwarg, dtype)
        if logits is None:
            logits = self._prefill(inputs, attend, positions, cache, dtype, lead)
        self._clock("prefill", started, device)

        step_mask = additive_mask(attend[:, None, None, :], dtype)
        state = _StepState(
            ids=torch.full((rows, 1), self.pad_id, dtype=torch.long, device=device),
            positions=positions[:, -1:] + 1,
            column=torch.tensor([lead + prompt_len], dtype=torch.long, device=device),
            mask=step_mask,
        )
        plan = plan_buckets(attend.int().argmax(-1).tolist(), attend.shape[1])
        with buckets(self.config, plan) as self.buckets:  # each run of rows over the slots it uses
            return self._decode(logits, state, cache, rows, repeated, on_look)

    def _decode(
        self,
        logits: torch.Tensor,
        state: _StepState,
        cache: StaticCache,
        rows: int,
        repeated: RepeatedLineCriteria | None,
        on_look: StepHook | None,
    ) -> list[list[int]]:
        device = logits.device
        step = self._step_fn(state, cache)
        eos = torch.tensor(self.eos or [-1], device=device)
        out = torch.full((rows, self.max_new), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        cut = [self.max_new] * rows
        looked, started = 0, time.perf_counter()
        for t in range(self.max_new):
            token = torch.where(done, self.pad_id, self.pick(logits))
            out[:, t] = token
            done |= torch.isin(token, eos)
            last = t + 1 == self.max_new
            if (t + 1) % CHECK_EVERY == 0 or last:
                new = out[:, looked : t + 1].tolist()
                if repeated is not None:
                    _stop_repeats(repeated, new, looked, cut, done)
                looked = t + 1
                if on_look is not None and on_look(looked, out[:, :looked]):
                    break
                if last or bool(done.all()):
                    break
            state.ids.copy_(token[:, None])
            logits = step()
            if t == 0:
                started = self._clock("first_step", started, device)
        generated = out.tolist()
        self._clock("steps", started, device)
        for r, n in enumerate(cut):
            generated[r][n:] = [self.pad_id] * (self.max_new - n)
        return generated

    def _clock(self, phase: str, since: float, device: torch.device) -> float:
        """Add the seconds from `since` to `phase` (after the GPU's queue drains); returns now."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - since
        return now

    def _prompt_inputs(
        self, input_ids: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
        """(the prefill's inputs, their attention mask, a prefix-tuning adapter's key/value prefix or
        None), as worker/evaluation/hf_decoding.py lays them out for `generate`: p-tuning and prompt
        tuning put their virtual-token embeddings before the (left-padded) prompt's; prefix tuning
        puts its trained keys and values in the cache's first slots, the prompt's positions after."""
        if self.prompt_learning is None:
            return {"input_ids": input_ids}, mask, None
        rows = input_ids.shape[0]
        if self.prompt_learning == PeftType.PREFIX_TUNING:
            return {"input_ids": input_ids}, mask, self.peft.get_prompt(batch_size=rows)
        embeds = self.peft.word_embeddings(input_ids)
        virtual = self.peft.get_prompt(batch_size=rows).to(embeds.dtype)
        ones = torch.ones(virtual.shape[:2], dtype=mask.dtype, device=mask.device)
        return {"inputs_embeds": torch.cat((virtual, embeds), 1)}, torch.cat((ones, mask), 1), None

    def _prefill(
        self,
        inputs: dict[str, torch.Tensor],
        attend: torch.Tensor,
        positions: torch.Tensor,
        cache: StaticCache,
        dtype: torch.dtype,
        lead: int,
    ) -> torch.Tensor:
        mask = prefill_mask(attend, positions.shape[1], lead, dtype)
        out = self.model(
            **inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        return out.logits[:, -1]

    def _step_fn(self, state: _StepState, cache: StaticCache) -> Callable[[], torch.Tensor]:
        """One decoding step on the state's tensors; on CUDA (with `graphs`) a CUDA graph replay after
        the first step, which runs eagerly on a side stream (warm-up) and is then captured."""

        def forward() -> torch.Tensor:
            state.mask.index_fill_(3, state.column, 0.0)
            out = self.model(
                input_ids=state.ids,
                attention_mask=state.mask,
                position_ids=state.positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kwarg: cache},
            )
            state.positions.add_(1)
            state.column.add_(1)
            return out.logits[:, -1]

        if not (self.graphs and state.ids.is_cuda):
            return forward
        graph: dict[str, Any] = {}

        def replay() -> torch.Tensor:
            if "graph" in graph:
                graph["graph"].replay()
                return graph["logits"]
            if "eager" in graph:
                return forward()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                logits = forward()  # the real first step, and the warm-up the capture needs
            torch.cuda.current_stream().wait_stream(side)
            g, before = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
            try:
                with torch.cuda.graph(g):  # recorded, not run: the state does not move
                    graph["logits"] = forward()
            except RuntimeError as exc:  # a module that syncs with the host cannot be captured
                # torch.cuda.graph leaves its capture stream current when the capture is invalidated
                torch.cuda.set_stream(before)
                torch.cuda.synchronize()
                if isinstance(exc, torch.OutOfMemoryError):
                    raise
                self.graph_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                graph["eager"] = True
                return logits
            graph["graph"] = g
            self.captured += 1
            return logits.clone()

        return replay


class _StepState:
    """The tensors a decoding step reads and advances; they live as long as the batch."""

    def __init__(self, ids: torch.Tensor, positions: torch.Tensor, column: torch.Tensor, mask: torch.Tensor):
        self.ids, self.positions, self.column, self.mask = ids, positions, column, mask


def _stop_repeats(
    repeated: RepeatedLineCriteria, new: list[list[int]], start: int, cut: list[int], done: torch.Tensor
) -> None:
    """Feed the new tokens to the repeated-line stop. A row it finishes (a repeated line, or EOS) is
    done, and `cut[row]` is the tokens it keeps: through the first one that finished it, as `generate`,
    which asks the criterion after every token, keeps them."""
    stopped = []
    for r, (row, tokens) in enumerate(zip(repeated.rows(len(new)), new, strict=True)):
        if row.done:
            continue
        before = copy.deepcopy(row)
        if row.feed(tokens, repeated.decode, repeated.eos):
            k = next(
                k
                for k in range(1, len(tokens) + 1)
                if copy.deepcopy(before).feed(tokens[:k], repeated.decode, repeated.eos)
            )
            cut[r] = start + k
            stopped.append(r)
    if stopped:
        done[torch.tensor(stopped, device=done.device)] = True
