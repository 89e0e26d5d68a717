"""Stacked LoRA: several LoRA adapters of one base, and the untuned base, in one generation batch at the
cost of one adapter.

peft's mixed-adapter batches (`generate(..., adapter_names=...)`) loop over the adapters inside every
LoRA layer, so each decoding step launches kernels in proportion to the number of adapters N; a small
model on a GPU is launch-bound, so N adapters cost about N passes. Here each adapted `nn.Linear` becomes
one `StackedLoRALinear` that holds all N adapters at once:

    y = base(x) + ((x @ A) * mask) @ B

A (in, R) is the adapters' lora_A matrices side by side (R = the sum of their ranks), B (R, out) their
lora_B matrices stacked, each pre-multiplied by its adapter's scaling (alpha/r, or alpha/sqrt(r) with
rsLoRA), and `mask` (rows, 1, R) keeps, for each batch row, the columns of that row's adapter (none for
the base). That is three kernels per layer besides the base's, whatever N is. The mask is the same for
every decoding step of one `generate` call (transformers pads finished rows rather than dropping them),
so it is set once per batch:

    with stacked_lora(peft_model, ["a", "b", "c"]) as model:  # the transformers model, stacked
        with adapter_rows(model).select(["a", BASE, "c", "a"]):
            model.generate(...)

The stacked modules replace peft's LoRA layers on entry and the peft layers are put back on exit; the
base's weights are never written, so `peft_model.unload()` afterwards gives the plain base back. Only
plain LoRA on float `nn.Linear` layers stacks: `unstackable_reason` says why an adapter does not (DoRA,
modules_to_save, ...), and the eval job evaluates those one at a time through peft. Inference only:
dropout is skipped and nothing here has gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

BASE = "__base__"
"""The row name of the untuned base (peft's name for it in mixed-adapter batches)."""
STACKABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Layout = tuple[tuple[int, int], ...]
"""A stacked module's columns: (adapter index, rank) per block, in column order."""


class AdapterRows:
    """Which adapter each row of the current batch uses; one instance is shared by every stacked module
    of a model, so a batch's adapters are chosen once, not once per layer.

    Modules register their column layout when they are built; `select` builds one mask per distinct
    layout (usually one: every adapter on every target module), so a forward pass only indexes a list.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or BASE in names:
            raise ValueError(f"adapter names must be distinct and not {BASE!r}: {list(names)}")
        self.names = list(names)
        self._index = {name: k for k, name in enumerate(self.names)}
        self._layouts: list[tuple[Layout, torch.device, torch.dtype]] = []
        self.masks: list[torch.Tensor | None] | None = None
        """Per layout: the (rows, 1, R) 0/1 mask of the selected batch, or None where every row uses every
        column (one adapter, no base rows: the multiply is skipped). None outside `select`."""

    def layout(self, blocks: Layout, device: torch.device, dtype: torch.dtype) -> int:
        """The id of a module's column layout (shared by modules with the same one)."""
        key = (blocks, device, dtype)
        if key not in self._layouts:
            self._layouts.append(key)
        return self._layouts.index(key)

    @contextmanager
    def select(self, row_names: Sequence[str]) -> Iterator[None]:
        """Run the batch whose row i uses adapter `row_names[i]` (`BASE` for the untuned base)."""
        unknown = sorted({n for n in row_names if n != BASE and n not in self._index})
        if unknown:
            raise ValueError(f"adapter(s) {', '.join(unknown)} are not stacked (stacked: {self.names})")
        rows = [self._index.get(name, -1) for name in row_names]
        self.masks = [_mask(blocks, rows, device, dtype) for blocks, device, dtype in self._layouts]
        try:
            yield
        finally:
            self.masks = None

    @contextmanager
    def only(self, start: int, end: int) -> Iterator[None]:
        """Within `select`, a forward of the selected batch's rows start..end alone (a prefill in groups
        of rows, worker/evaluation/grouped_prefill.py)."""
        whole = self.masks
        self.masks = None if whole is None else [m if m is None else m[start:end] for m in whole]
        try:
            yield
        finally:
            self.masks = whole


def _mask(blocks: Layout, rows: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    if len(blocks) == 1 and all(row == blocks[0][0] for row in rows):
        return None
    owner = torch.tensor([k for k, rank in blocks for _ in range(rank)])
    mask = torch.tensor(rows)[:, None] == owner[None, :]
    return mask.to(dtype).unsqueeze(1).to(device)


class StackedLoRALinear(nn.Module):
    """A base `nn.Linear` plus several LoRA adapters, each batch row getting its own (see the module
    docstring). A and B are non-persistent buffers: they follow `.to()` but stay out of state dicts."""

    def __init__(
        self,
        base_layer: nn.Linear,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        rows: AdapterRows,
        layout: int,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.register_buffer("lora_A", lora_A, persistent=False)
        self.register_buffer("lora_B", lora_B, persistent=False)
        self.rows = rows
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.rows.masks
        if masks is None:
            raise RuntimeError(
                "a stacked LoRA model needs its rows' adapters: run it in adapter_rows(model).select(...)"
            )
        if x.dim() != 3:
            raise ValueError(
                f"a stacked LoRA layer takes (batch, tokens, features) inputs, got shape {tuple(x.shape)}"
            )
        out = self.base_layer(x)
        h = torch.matmul(x if x.dtype == self.lora_A.dtype else x.to(self.lora_A.dtype), self.lora_A)
        mask = masks[self.layout]
        if mask is not None:
            h.mul_(mask)
        if out.dtype == h.dtype and out.is_contiguous():
            # One GEMM that accumulates into the base output, rather than a product and an add.
            out.view(-1, out.shape[-1]).addmm_(h.view(-1, h.shape[-1]), self.lora_B)
            return out
        return out + torch.matmul(h, self.lora_B).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[1]}, layout={self.layout}"


# ---------------------------------------------------------------- from a peft model


def unstackable_reason(peft_model: Any, name: str) -> str | None:
    """Why adapter `name` of `peft_model` cannot be stacked, or None when it can: stacking is exact only
    for a plain low-rank sum on float `nn.Linear` layers."""
    from peft import PeftType

    cfg = peft_model.peft_config[name]
    config_reasons = [
        (cfg.peft_type != PeftType.LORA, f"it is a {cfg.peft_type} adapter, not LoRA"),
        (getattr(cfg, "use_dora", False), "DoRA (use_dora) rescales each weight column: not a low-rank sum"),
        (
            getattr(cfg, "modules_to_save", None),
            f"it replaces whole modules (modules_to_save={cfg.modules_to_save})",
        ),
        (getattr(cfg, "bias", "none") != "none", f"it trains the base layers' biases (bias={cfg.bias!r})"),
        (getattr(cfg, "lora_bias", False), "its lora_B layers have biases (lora_bias)"),
        (
            getattr(cfg, "trainable_token_indices", None),
            "it trains token embeddings (trainable_token_indices)",
        ),
        (getattr(cfg, "layer_replication", None), "it replicates layers (layer_replication)"),
        (
            getattr(cfg, "target_parameters", None),
            "it adapts parameters (target_parameters), not Linear layers",
        ),
    ]
    for applies, reason in config_reasons:
        if applies:
            return reason
    for module_name, layer in _lora_layers(peft_model):
        if name in layer.r:
            reason = _layer_reason(layer, name)
            if reason is not None:
                return f"{module_name.removeprefix('base_model.model.')}: {reason}"
    return None


def _layer_reason(layer: Any, name: str) -> str | None:
    from peft.tuners.lora import Linear as LoraLinear

    if type(layer) is not LoraLinear:
        return f"it adapts a layer of type {type(layer).__name__}; only LoRA on nn.Linear layers stacks"
    base = layer.base_layer
    if type(base) is not nn.Linear or base.weight.dtype not in STACKABLE_DTYPES:
        return (
            f"its base layer is a {type(base).__name__} with {base.weight.dtype} weights, not a float Linear"
        )
    if layer.fan_in_fan_out:
        return "its weights are stored transposed (fan_in_fan_out)"
    if name in layer.lora_variant:
        return f"it is a LoRA variant ({type(layer.lora_variant[name]).__name__})"
    if layer.merged:
        return "adapters are merged into this layer's weights"
    if layer.lora_B[name].bias is not None:
        return "its lora_B layer has a bias (lora_bias)"
    return None


def _lora_layers(peft_model: Any) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


@contextmanager
def stacked_lora(peft_model: Any, names: Sequence[str]) -> Iterator[nn.Module]:
    """`peft_model`'s transformers model with adapters `names` stacked (module docstring); on exit the
    peft layers are back as they were. Every peft layer left in place (one holding only adapters not
    stacked) is disabled meanwhile, through peft's `disable_adapter()`, so it acts as the base."""
    for name in names:
        reason = unstackable_reason(peft_model, name)
        if reason is not None:
            raise ValueError(f"adapter {name!r} cannot be stacked: {reason}")
    rows = AdapterRows(names)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    with peft_model.disable_adapter():
        try:
            for module_name, layer in _lora_layers(peft_model):
                present = [(k, name) for k, name in enumerate(names) if name in layer.r]
                if present:
                    parent_name, _, attr = module_name.rpartition(".")
                    parent = peft_model.get_submodule(parent_name)
                    setattr(parent, attr, _stack(layer, present, rows))
                    swapped.append((parent, attr, layer))
            yield peft_model.get_base_model()
        finally:
            for parent, attr, layer in reversed(swapped):
                setattr(parent, attr, layer)


def _stack(layer: Any, present: list[tuple[int, str]], rows: AdapterRows) -> StackedLoRALinear:
    """One LoRA layer's adapters `present` ((index, name) pairs) as a StackedLoRALinear, in the base
    layer's dtype and device; the scaling is folded into B in fp32 before the cast."""
    base: nn.Linear = layer.base_layer
    weight = base.weight
    with torch.no_grad():
        a = torch.cat([layer.lora_A[n].weight.float() for _, n in present], 0)  # (R, in)
        b = torch.cat([layer.lora_B[n].weight.float() * layer.scaling[n] for _, n in present], 1)  # (out, R)
    blocks = tuple((k, layer.lora_A[n].weight.shape[0]) for k, n in present)
    return StackedLoRALinear(
        base,
        a.t().contiguous().to(device=weight.device, dtype=weight.dtype),
        b.t().contiguous().to(device=weight.device, dtype=weight.dtype),
        rows,
        rows.layout(blocks, weight.device, weight.dtype),
    )


def adapter_rows(model: nn.Module) -> AdapterRows:
    """The row selector of a stacked model (what `stacked_lora` yields); ValueError if nothing is stacked."""
    for module in model.modules():
        if isinstance(module, StackedLoRALinear):
            return module.rows
    raise ValueError("per-row adapter names need a stacked LoRA model (worker.multi_lora.stacked_lora)")
