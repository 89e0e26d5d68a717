"""A trained model's artifact as a whole: save it (the method's format, `ft_artifact.json`, a model card
with lineage and metrics), load it onto its base for inference, merge a LoRA adapter into its base.
Writing into a temporary directory and moving it into the store is the caller's job (catalog.store):
these functions only fill `out_dir`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from catalog.errors import InvalidInput
from worker.methods import get_method
from worker.methods.artifacts import ArtifactFormat

ARTIFACT_INFO = "ft_artifact.json"
LINEAGE_KEYS = (
    "base_model",
    "base_model_origin",
    "base_model_id",
    "dataset",
    "template",
    "job",
    "parent",
    "created_by",
    "created_at",
)


def save_artifact(
    model: Any,
    method: str,
    out_dir: Path | str,
    tokenizer: Any = None,
    card: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Save what `method` trained into `out_dir` (created), with a model card built from `card`
    (keys: name, base_model, dataset, template, job, parent, hyperparameters, metrics, ... any other).
    `state_dict`: a sharded model's gathered weights (whole-model methods)."""
    from worker.models.loading import count_parameters

    fmt = get_method(method).artifact
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = dict(card or {})
    fmt.save(model, out, tokenizer, {**card, "method": method}, state_dict=state_dict)
    counts = count_parameters(model)
    params = {"trainable": counts.trainable, "total": counts.total}
    params["trainable_percent"] = round(counts.percent, 4)
    card.setdefault("parameters", params)
    info = {"format": 1, "method": method, "kind": fmt.kind, "card": card}
    (out / ARTIFACT_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    # peft writes its own README.md; ours replaces it.
    (out / "README.md").write_text(render_card(method, fmt, card), encoding="utf-8")
    return out


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| key | value |", "| --- | --- |"]
    for key, value in rows.items():
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
        lines.append(f"| {key} | {text.replace('|', '/').replace(chr(10), ' ')} |")
    return lines


def render_card(method: str, fmt: ArtifactFormat, card: dict[str, Any]) -> str:
    """The README.md model card: front matter for hubs, then lineage, training, metrics."""
    front: dict[str, Any] = {
        "library_name": fmt.library,
        "tags": ["ft", method],
    }
    if card.get("base_model_id"):  # hubs resolve `base_model` as an id: only a hub id goes there
        front["base_model"] = str(card["base_model_id"])
    title = card.get("name") or f"{method} fine-tune of {card.get('base_model', 'a base model')}"
    parts = [
        "---",
        yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(),
        "---",
        "",
        f"# {title}",
        "",
    ]
    parts += [f"Trained with `ft` using the `{method}` method ({fmt.about}).", ""]
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
    parts += ["## Use", "", fmt.usage, ""]
    return "\n".join(parts)


def load_for_inference(
    base_model_dir: Path | str,
    artifact_dir: Path | str,
    method: str,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    method_flags: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    sha256: str | None = None,
    label: str = "adapter",
) -> Any:
    """The base with the artifact applied, in eval mode, ready to generate.

    An artifact from the store is first checked against `sha256` (the catalog's; None: the digest the
    store named it by): a damaged one fails with one line naming `label` and the file.

    By default the base is loaded unquantised in `dtype` (fp32 when None), also under an adapter trained
    on a 4-bit or int8 base (qlora, lora --base-bits 8): the adapter applies to the full-precision
    weights that the quantised ones approximate, as when merging. Given `method_flags` (the method's
    flags as trained, e.g. `{}` for qlora, `{"base_bits": 8}` for lora), the base is loaded exactly as
    training loaded it, quantised included (on a device where bitsandbytes runs)."""
    import torch

    from catalog.integrity import verify_directory
    from worker.models.loading import load_base

    artifact_dir = verify_directory(Path(artifact_dir), sha256, label)
    spec = get_method(method)
    if method_flags is None:
        load_kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    else:
        load_kwargs = spec.load_kwargs(spec.make_config(method_flags), device)

    def base(path: Path) -> Any:
        return load_base(path, device, trust_remote_code=trust_remote_code, **load_kwargs)

    return spec.artifact.load(Path(base_model_dir), Path(artifact_dir), load_base=base).eval()


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""`ft adapters export --merge --dtype` names and the torch dtypes they stand for."""


def merge_to_dir(
    base_model_dir: Path | str,
    artifact_dir: Path | str,
    out_dir: Path | str,
    *,
    method: str = "lora",
    dtype: Any = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Merge a LoRA/DoRA (or QLoRA) adapter into its base and save the merged model with the base's
    tokenizer and a model card (README.md: what was merged, in which dtype, from which adapter): an
    ordinary model directory that needs neither peft nor the adapter. The base is loaded unquantised
    in `dtype` (a torch dtype or its name; bf16 when None), so QLoRA adapters merge into full weights."""
    import torch
    from peft import PeftModel

    from worker.models.loading import load_base, load_tokenizer

    if method not in ("lora", "qlora"):
        raise InvalidInput(
            f"only lora/qlora adapters can be merged, not {method}: export the adapter instead"
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, DTYPES.get(dtype, dtype))
    dtype = dtype or torch.bfloat16
    base = load_base(base_model_dir, "cpu", dtype=dtype)
    merged = PeftModel.from_pretrained(base, Path(artifact_dir)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base_model_dir).save_pretrained(out)
    card = {**(card or {}), "method": method, "dtype": str(dtype).removeprefix("torch.")}
    (out / "README.md").write_text(render_merged_card(card), encoding="utf-8")
    return out


def render_merged_card(card: dict[str, Any]) -> str:
    """The model card of a merged export: front matter for hubs, then what it was made from."""
    front: dict[str, Any] = {"library_name": "transformers", "tags": ["ft", card["method"], "merged"]}
    if card.get("base_model_id"):
        front["base_model"] = card["base_model_id"]
    title = card.get("name") or "merged model"
    about = (
        f"The `{card['method']}` adapter `{card.get('adapter', '?')}` merged into its base "
        f"`{card.get('base_model', '?')}` by `ft adapters export --merge`, saved as **{card['dtype']}**."
    )
    rows = {k: v for k, v in card.items() if k not in ("name", "base_model_id")}
    return "\n".join([
        "---", yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(), "---", "",
        f"# {title}", "", about, "", *_table(rows), "",
        "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")', "```", "",
    ])  # fmt: skip
