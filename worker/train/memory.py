"""Peak GPU memory of a train job, estimated from the base model's config.json before anything is loaded.

    est = estimate_peak(config, "lora", LoraConfig(), cfg, longest_row=1309, cuda=True)
    est.total_bytes, est.describe()   # "43.9 GiB peak: weights 2.9, ... micro-batches of 16,384 tokens"

`ft submit train --dry-run` prints it; a job process on a GPU compares it with the GPU's memory before
it loads the model: with --gradient-checkpointing unset it turns checkpointing on when the job only
fits with it, and it refuses a job that fits neither way with a message that names what to lower
(worker/train/recipe.py). The same terms as `torch.cuda.max_memory_allocated` counts:

- weights: each parameter in the dtype the method loads it in (bf16, int8, 4-bit NF4, fp32 for full);
- trainable state: fp32 weights, gradients and two AdamW moments (16 bytes a parameter; 10 with an
  8-bit AdamW), plus autocast's bf16 copy of an fp32 full fine-tune (2 bytes);
- activations: bytes per token per decoder layer that backward needs, times the largest micro-batch's
  tokens (its rows x its padded width, as `worker.train.batching.by_token_budget` groups them), times
  the layers gradients flow through (a freeze job's upper blocks only); with gradient checkpointing,
  each layer's input and one layer's worth. Per layer: 27h + 6I bytes with Liger's kernels (RMSNorm,
  RoPE, SwiGLU) and 47h + 8I without (h hidden size, I MLP width), plus, per adapted linear layer, 3
  bytes an input feature for LoRA dropout (its output and mask), and 2 for each linear layer of an int8
  base (bitsandbytes keeps an fp16 copy of the input); LLM.int8's outlier matmul adds 10h + 12I;
- logits: without the fused cross-entropy, 6.5 bytes a vocabulary entry a token (bf16 logits and
  their fp32 copy).

The per-layer constants were fitted on the measured peaks of the bench's 16k-token micro-batches on an
H200 (both shapes, bench/results/train-throughput-*-NVIDIA_H200.json); the bench's other cases (8-row
micro-batches, the fault reports' longer rows, the int8 base) check them: every estimate there is within
15% of the measured peak (tests/worker/train/test_memory.py). Written here: accelerate's
`estimate-memory` counts weights and optimizer state only, and activations are most of a fine-tune's
memory at these batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GIB = 2**30
FUSED = (27, 6)
"""Activation bytes a token a decoder layer, as (per hidden unit, per MLP unit), with Liger's kernels."""
UNFUSED = (47, 8)
"""The same with transformers' own RMSNorm, RoPE and SwiGLU."""
LLM_INT8 = (10, 12)
"""Added by bitsandbytes' LLM.int8 matmul (outlier decomposition), per hidden and per MLP unit."""
LOGIT_BYTES = 6.5
"""Bytes a vocabulary entry a token of the logits when the loss is not fused."""
REFUSE_OVER = 1.15
"""A job is refused only when its estimate exceeds the GPU's memory by more than the estimate's error
(15% on the bench's cases); closer than that it runs, and may still run out of memory."""
GPU_SHARE = 0.92
"""The share of a GPU's memory a job may plan to use: the rest is the CUDA context, cuBLAS workspaces
and the allocator's fragmentation, which `max_memory_allocated` does not count."""


class UnknownShape(ValueError):
    """A config.json whose architecture the estimate does not read."""


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only model's config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        """The shape of a Llama-like config (hidden_size, num_hidden_layers, ...); UnknownShape for
        others (GPT-2's n_embd, GLM's own names): those jobs run without an estimate."""
        try:
            return cls._from_config(config)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnknownShape(f"config.json has no {exc} the estimate reads") from None

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> Shape:
        text = config.get("text_config") or config
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        return cls(
            hidden=hidden,
            intermediate=int(text.get("intermediate_size") or 4 * hidden),
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            vocab=int(text["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            qkv_bias=bool(text.get("attention_bias", text.get("model_type") == "qwen2")),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by transformers' module name."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    @property
    def layer_params(self) -> int:
        linear = sum(a * b for a, b in self.linears().values())
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return linear + bias + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params


@dataclass(frozen=True)
class MemoryEstimate:
    """A train job's estimated peak, in bytes, by what holds it."""

    weights: int
    trainable_state: int
    activations: int
    logits: int
    micro_tokens: int
    checkpointing: bool

    @property
    def total_bytes(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.logits

    def fits(self, gpu_bytes: int) -> bool:
        return self.total_bytes <= GPU_SHARE * gpu_bytes

    def describe(self) -> str:
        parts = [f"weights {self.weights / GIB:.1f}", f"trainable state {self.trainable_state / GIB:.1f}",
                 f"activations {self.activations / GIB:.1f}"]  # fmt: skip
        if self.logits:
            parts.append(f"logits {self.logits / GIB:.1f}")
        ckpt = "on" if self.checkpointing else "off"
        return (
            f"{self.total_bytes / GIB:.1f} GiB peak ({', '.join(parts)}) for micro-batches of "
            f"{self.micro_tokens:,} tokens, gradient checkpointing {ckpt}"
        )


def micro_batch_tokens(
    max_tokens_per_batch: int, batch_size: int, rows_per_step: int, longest_row: int
) -> int:
    """Tokens of the largest micro-batch (rows x padded width) at worst: the budget (or one row wider
    than it), no more than a whole step's rows at the longest width; without a budget, `batch_size`
    rows of the longest width. Widths are rounded up to 8 (the padding on a GPU)."""
    width = math.ceil(longest_row / 8) * 8
    if max_tokens_per_batch <= 0:
        return width * batch_size
    # shorter rows than the longest pack up to the budget; a row wider than it goes alone
    return min(max(max_tokens_per_batch, width), rows_per_step * width)


def estimate_peak(
    config: dict[str, Any],
    method: str,
    method_cfg: Any,
    cfg: Any,
    *,
    longest_row: int,
    cuda: bool = True,
    checkpointing: bool | None = None,
) -> MemoryEstimate:
    """The peak of training `method` (its config dataclass `method_cfg`) on a base of `config` with the
    TrainConfig `cfg`, on rows of at most `longest_row` tokens (see the module docstring).
    `checkpointing` overrides cfg.gradient_checkpointing (None: take it, unset counting as off)."""
    shape = Shape.from_config(config)
    linears = shape.linears()
    ckpt = bool(cfg.gradient_checkpointing) if checkpointing is None else checkpointing
    fused = cuda and bool(cfg.fused_kernels)
    micro = micro_batch_tokens(
        cfg.max_tokens_per_batch, cfg.batch_size, cfg.batch_size * cfg.grad_accum, longest_row
    )
    a_h, a_i = FUSED if fused else UNFUSED
    per_layer = a_h * shape.hidden + a_i * shape.intermediate
    layer_linear = shape.layer_params - 2 * shape.hidden
    state_bytes = 10 if "8bit" in str(cfg.optimizer or "") else 16

    if method in ("lora", "qlora"):
        adapted = _targets(method_cfg, linears)
        rank = int(method_cfg.rank)
        trainable = shape.layers * sum(
            rank * (a + b) + (b if method_cfg.dora else 0) for a, b in adapted.values()
        )
        bits = 4 if method == "qlora" else (getattr(method_cfg, "base_bits", None) or 16)
        weights = shape.layers * (layer_linear * bits / 8 + 2 * 2 * shape.hidden) + 2 * shape.embedding_params
        if method == "qlora":
            weights += shape.layers * layer_linear / 64 * 0.25  # NF4 block constants, double-quantised
        if float(method_cfg.dropout) > 0:
            per_layer += 3 * sum(a for a, _ in adapted.values())
        if bits == 8:
            if getattr(method_cfg, "int8_matmul", "weight-only") == "llm-int8":
                per_layer += LLM_INT8[0] * shape.hidden + LLM_INT8[1] * shape.intermediate
            else:
                per_layer += 2 * sum(a for a, _ in linears.values())
        state = trainable * state_bytes
        grad_layers = shape.layers
    elif method == "full":
        fp32 = getattr(method_cfg, "precision", "fp32") == "fp32"
        moments = state_bytes - 8  # AdamW's two moments in fp32 (8 bytes), or 8-bit (2)
        weights = shape.params * (4 if fp32 else 2)
        # gradients, moments (in the weights' dtype), and autocast's bf16 copy of fp32 weights
        state = shape.params * ((4 + moments + 2) if fp32 else (2 + moments // 2))
        grad_layers = shape.layers
    elif method == "freeze":
        grad_layers = int(getattr(method_cfg, "layers", None) or max(1, round(shape.layers * 0.53)))
        weights = shape.params * 2
        state = grad_layers * shape.layer_params * state_bytes
    else:  # prompt learning: a small encoder, gradients through every layer to the virtual tokens
        weights = shape.params * 2
        state = 0
        grad_layers = shape.layers

    if ckpt:
        activations = micro * (grad_layers * 2 * shape.hidden + per_layer)
    else:
        activations = micro * grad_layers * per_layer
    logits = 0 if fused else int(micro * shape.vocab * LOGIT_BYTES)
    return MemoryEstimate(
        weights=int(weights), trainable_state=int(state), activations=int(activations), logits=logits,
        micro_tokens=micro, checkpointing=ckpt,
    )  # fmt: skip


def _targets(method_cfg: Any, linears: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    target = str(getattr(method_cfg, "target", "all-linear"))
    if target == "all-linear":
        return linears
    names = {t.strip() for t in target.split(",")}
    return {n: dims for n, dims in linears.items() if n in names}


def plan_checkpointing(
    config: dict[str, Any],
    method: str,
    method_cfg: Any,
    cfg: Any,
    *,
    longest_row: int,
    gpu_bytes: int,
    fused: bool,
    shards: int = 1,
) -> MemoryEstimate:
    """The estimate the job will run with on a GPU of `gpu_bytes`: --gradient-checkpointing as given,
    or, unset, off when the job fits without it and on when it fits only with it. InvalidInput, naming
    what to lower, when even the last try needs more than REFUSE_OVER x the GPU's memory. `shards`: the
    ranks an FSDP full job splits its weights and state over."""
    from catalog.errors import InvalidInput

    def at(ckpt: bool) -> MemoryEstimate:
        est = estimate_peak(
            config, method, method_cfg, cfg, longest_row=longest_row, cuda=fused, checkpointing=ckpt
        )
        if shards > 1:
            est = MemoryEstimate(
                weights=est.weights // shards, trainable_state=est.trainable_state // shards,
                activations=est.activations, logits=est.logits, micro_tokens=est.micro_tokens,
                checkpointing=ckpt,
            )  # fmt: skip
        return est

    tries = [bool(cfg.gradient_checkpointing)] if cfg.gradient_checkpointing is not None else [False, True]
    for ckpt in tries:
        est = at(ckpt)
        if est.fits(gpu_bytes):
            return est
    if est.total_bytes <= REFUSE_OVER * gpu_bytes:  # within the estimate's error: let it try
        return est
    fixes = [f"--max-tokens-per-batch (now {cfg.max_tokens_per_batch})" if cfg.max_tokens_per_batch
             else f"--batch-size (now {cfg.batch_size})"]  # fmt: skip
    if not est.checkpointing:
        fixes.append("add --gradient-checkpointing")
    if method == "lora":
        fixes.append("train with --method qlora")
    raise InvalidInput(
        f"this job needs about {est.total_bytes / GIB:.1f} GiB and the GPU has {gpu_bytes / GIB:.1f} GiB "
        f"({est.describe()}): lower {', or '.join(fixes)}"
    )
