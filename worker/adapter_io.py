"""Trained artifacts: save them, reload them onto their base for inference, merge LoRA into a model.

Formats, by the method's artifact kind (worker.methods.Method.artifact):
- "peft" (lora, qlora, ptuning, ptuning-v2): `adapter_config.json` + `adapter_model.safetensors`, as
  written by peft's `save_pretrained`; reloaded with `PeftModel.from_pretrained` onto the base;
- "freeze": the trained tensors in `freeze_weights.safetensors` + `freeze_manifest.json` (parameter
  names, dtype, base model facts); reloaded by loading the base and overwriting those tensors;
- "full": an ordinary model directory (safetensors + config + tokenizer).
Every artifact also gets `ft_artifact.json` (method, kind, card) and a `README.md` model card with its
lineage and metrics. Writing into a temporary directory and moving it into the store is the caller's
job (see catalog.store): these functions only fill `out_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from catalog.errors import InvalidInput
from worker.methods import get_method
from worker.model_loading import count_parameters, load_base, load_tokenizer

FREEZE_WEIGHTS = "freeze_weights.safetensors"
FREEZE_MANIFEST = "freeze_manifest.json"
ARTIFACT_INFO = "ft_artifact.json"
LINEAGE_KEYS = ("base_model", "dataset", "template", "job", "parent", "created_by", "created_at")


def save_artifact(
    model: nn.Module,
    method: str,
    out_dir: Path | str,
    tokenizer: Any = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Save what `method` trained into `out_dir` (created), with a model card built from `card`
    (keys: name, base_model, dataset, template, job, parent, hyperparameters, metrics, ... any other)."""
    kind = get_method(method).artifact
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = dict(card or {})
    if kind == "peft":
        if not hasattr(model, "peft_config"):
            raise TypeError(f"--method {method} artifacts are peft adapters; got a {type(model).__name__}")
        model.save_pretrained(out, safe_serialization=True)
    elif kind == "freeze":
        weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        if not weights:
            raise TypeError(
                "the model has no trainable parameters to save: was it prepared with --method freeze?"
            )
        save_file(weights, out / FREEZE_WEIGHTS)
        manifest = {
            "method": method,
            "parameters": sorted(weights),
            "dtype": str(next(iter(weights.values())).dtype).removeprefix("torch."),
            "model_type": getattr(model.config, "model_type", None),
            "architectures": getattr(model.config, "architectures", None),
            "num_hidden_layers": getattr(model.config, "num_hidden_layers", None),
            "base_model": card.get("base_model"),
        }
        (out / FREEZE_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        model.save_pretrained(out, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    counts = count_parameters(model)
    params = {
        "trainable": counts.trainable,
        "total": counts.total,
        "trainable_percent": round(counts.percent, 4),
    }
    card.setdefault("parameters", params)
    info = {"format": 1, "method": method, "kind": kind, "card": card}
    (out / ARTIFACT_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    # peft writes its own README.md; ours replaces it.
    (out / "README.md").write_text(render_card(method, kind, card), encoding="utf-8")
    return out


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| key | value |", "| --- | --- |"]
    for key, value in rows.items():
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
        lines.append(f"| {key} | {text.replace('|', '/').replace(chr(10), ' ')} |")
    return lines


def render_card(method: str, kind: str, card: dict[str, Any]) -> str:
    """The README.md model card: front matter for hubs, then lineage, training, metrics."""
    front: dict[str, Any] = {
        "library_name": "peft" if kind == "peft" else "transformers",
        "tags": ["ft", method],
    }
    if card.get("base_model"):
        front["base_model"] = str(card["base_model"])
    title = card.get("name") or f"{method} fine-tune of {card.get('base_model', 'a base model')}"
    parts = [
        "---",
        yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(),
        "---",
        "",
        f"# {title}",
        "",
    ]
    parts += [f"Trained with `ft` using the `{method}` method ({_KIND_TEXT[kind]}).", ""]
    lineage = {k: card[k] for k in LINEAGE_KEYS if card.get(k) is not None}
    if lineage:
        parts += ["## Lineage", "", *_table(lineage), ""]
    for key, heading in (
        ("parameters", "Parameters"),
        ("hyperparameters", "Training"),
        ("metrics", "Metrics"),
    ):
        if isinstance(card.get(key), dict) and card[key]:
            parts += [f"## {heading}", "", *_table(card[key]), ""]
    other = {
        k: v
        for k, v in card.items()
        if k not in (*LINEAGE_KEYS, "name", "parameters", "hyperparameters", "metrics")
    }
    if other:
        parts += ["## Other", "", *_table(other), ""]
    parts += ["## Use", "", _USE[kind], ""]
    return "\n".join(parts)


_KIND_TEXT = {
    "peft": "a peft adapter, saved apart from the base model",
    "freeze": "the trained transformer blocks' tensors, saved apart from the base model",
    "full": "a complete model",
}
_USE = {
    "peft": "`worker.adapter_io.load_for_inference(base_dir, this_dir, method)`, or with peft: "
    "`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), this_dir)`. An adapter "
    "trained on a quantised base (qlora, lora --base-bits 8) applies to the unquantised base too.",
    "freeze": '`worker.adapter_io.load_for_inference(base_dir, this_dir, "freeze")`: loads the base and '
    f"overwrites the tensors listed in `{FREEZE_MANIFEST}`.",
    "full": "`AutoModelForCausalLM.from_pretrained(this_dir)`.",
}


def load_for_inference(
    base_model_dir: Path | str,
    artifact_dir: Path | str,
    method: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    method_flags: dict[str, Any] | None = None,
) -> nn.Module:
    """The base with the artifact applied, in eval mode, ready to generate.

    By default the base is loaded unquantised in `dtype`, also under an adapter trained on a 4-bit or
    int8 base (qlora, lora --base-bits 8): the adapter applies to the full-precision weights that the
    quantised ones approximate, as when merging. Given `method_flags` (the method's flags as trained,
    e.g. `{}` for qlora, `{"base_bits": 8}` for lora), the base is loaded exactly as training loaded it,
    quantised included (on a device where bitsandbytes runs): the trained model's outputs and memory."""
    spec = get_method(method)
    artifact = Path(artifact_dir)
    if method_flags is None:
        load_kwargs: dict[str, Any] = {"dtype": dtype}
    else:
        load_kwargs = spec.load_kwargs(spec.make_config(method_flags), device)
    if spec.artifact == "full":
        model = load_base(artifact, device, **load_kwargs)
    elif spec.artifact == "peft":
        from peft import PeftModel

        if not (artifact / "adapter_config.json").is_file():
            raise InvalidInput(f"{artifact} holds no peft adapter (adapter_config.json is missing)")
        model = PeftModel.from_pretrained(load_base(base_model_dir, device, **load_kwargs), artifact)
    else:
        model = load_base(base_model_dir, device, **load_kwargs)
        apply_freeze(model, artifact)
    return model.eval()


def apply_freeze(model: nn.Module, artifact: Path) -> None:
    manifest_path = artifact / FREEZE_MANIFEST
    if not manifest_path.is_file():
        raise InvalidInput(f"{artifact} holds no freeze artifact ({FREEZE_MANIFEST} is missing)")
    manifest = json.loads(manifest_path.read_text())
    model_type = getattr(model.config, "model_type", None)
    if manifest.get("model_type") not in (None, model_type):
        raise InvalidInput(
            f"{artifact} was trained on a {manifest['model_type']} model, not this {model_type} base model"
        )
    weights = load_file(artifact / FREEZE_WEIGHTS)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise InvalidInput(
            f"{artifact} has tensors this base model lacks ({', '.join(unknown[:3])}): wrong base?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            if params[name].shape != tensor.shape:
                raise InvalidInput(
                    f"{artifact}: {name} is {tuple(tensor.shape)}, the base has {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor.to(params[name].dtype))


def merge_to_dir(
    base_model_dir: Path | str,
    artifact_dir: Path | str,
    out_dir: Path | str,
    *,
    method: str = "lora",
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Merge a LoRA/DoRA (or QLoRA) adapter into its base and save the merged model with the base's
    tokenizer: an ordinary model directory that needs neither peft nor the adapter. The base is loaded
    unquantised in `dtype`, so QLoRA adapters merge into bf16 weights."""
    if method not in ("lora", "qlora"):
        raise InvalidInput(
            f"only lora/qlora adapters can be merged, not {method}: export the adapter instead"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_model_dir, "cpu", dtype=dtype), Path(artifact_dir))
    merged = model.merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base_model_dir).save_pretrained(out)
    return out
