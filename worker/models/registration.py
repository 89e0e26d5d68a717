"""Registering base models: a transformers directory where it lies (checked: config, tokenizer,
weights, a causal-LM class for the config, each weight's shape against the config) or a hub id
(recorded; a worker resolves it from its cache). Importing a GGUF file is worker.models.gguf; the
rows are catalog.base_models'.

    register_path(session, "tiny", "/models/tiny", user)
    register_hub(session, "qwen", "Qwen/Qwen2.5-0.5B-Instruct", user, revision="7ae557604adf")
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from catalog.base_models import check_name_free, insert_base_model
from catalog.errors import InvalidInput
from catalog.models import BaseModel
from catalog.names import check_name
from catalog.store import sha256_file

_TOKENIZER_NAMES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
}
_WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def register_path(
    session: Session,
    name: str,
    path: str | Path,
    user: str,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> BaseModel:
    """Register a transformers model directory where it lies (uri = its absolute path)."""
    check_name(name, "model name")
    _check_trust(trust_remote_code, revision)
    check_name_free(session, name)
    root = Path(path).expanduser().resolve()
    info = inspect_model_dir(root, trust_remote_code=trust_remote_code)
    return insert_base_model(
        session,
        BaseModel(
            name=name,
            source="path",
            uri=str(root),
            origin=str(root),
            revision=revision,
            trust_remote_code=trust_remote_code,
            created_by=user,
            **info,
        ),
    )


def register_hub(
    session: Session, name: str, hub_id: str, user: str, revision: str | None = None
) -> BaseModel:
    """Record a hub id; nothing is downloaded here (a worker resolves it from its cache)."""
    check_name(name, "model name")
    parts = hub_id.split("/")
    if len(parts) != 2 or not all(parts) or any(" " in p or p in (".", "..") for p in parts):
        raise InvalidInput(f"invalid hub id {hub_id!r}: expected ORG/NAME (--hub)")
    check_name_free(session, name)
    return insert_base_model(
        session,
        BaseModel(name=name, source="hub", uri=hub_id, origin=hub_id, revision=revision, created_by=user),
    )


def type_name(config: Any) -> str | None:
    archs = getattr(config, "architectures", None) or []
    return archs[0] if archs else None


# ---------------------------------------------------------------- inspection


def inspect_model_dir(root: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Check that `root` holds a loadable config, tokenizer and weights; return the recorded facts."""
    from transformers import AutoConfig, AutoTokenizer

    if not root.is_dir():
        raise InvalidInput(f"no such model directory: {root} (--path)")
    if not (root / "config.json").is_file():
        raise InvalidInput(f"{root} has no config.json: not a transformers model directory (--path)")
    if not tokenizer_files(root):
        raise InvalidInput(
            f"{root} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json + merges.txt): "
            "save the tokenizer into the model directory"
        )
    if not any(any(root.glob(g)) for g in _WEIGHT_GLOBS):
        raise InvalidInput(f"{root} has no weights (model.safetensors or pytorch_model.bin)")
    try:
        config = AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise InvalidInput(
                f"{root} needs custom code: pass --trust-remote-code with a pinned --revision"
            ) from exc
        raise InvalidInput(f"cannot load the config in {root}: {first_line(exc)}") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot load the config in {root}: {first_line(exc)}") from exc
    try:
        AutoTokenizer.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot load the tokenizer in {root}: {first_line(exc)}") from exc
    return {
        "architecture": type_name(config),
        "model_type": getattr(config, "model_type", None),
        "parameter_count": _count_or_refuse(root, config, trust_remote_code),
        "dtype": _dtype_name(config, root),
        "tokenizer_sha256": tokenizer_sha256(root),
    }


def _count_or_refuse(root: Path, config: Any, trust_remote_code: bool) -> int:
    """The parameter count of the model `config` describes, after checking that the weights in `root`
    have the shapes it asks for (both read without loading a weight: `meta` device, file headers)."""
    try:
        model = meta_model(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # e.g. an encoder-only config: no causal-LM class for it
        raise InvalidInput(
            f"{root} is not a causal language model that transformers can build "
            f"(model_type {getattr(config, 'model_type', None)!r}): {first_line(exc)}"
        ) from exc
    if getattr(config, "quantization_config", None) is None:  # packed weights have other shapes
        check_weight_shapes(root, model)
    return sum(p.numel() for p in model.parameters())


def meta_model(config: Any, *, trust_remote_code: bool = False) -> Any:
    """The causal LM `config` describes, built on the `meta` device (no memory used)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def parameters_of_config(config: Any, *, trust_remote_code: bool = False) -> int:
    """Parameters of the model `config` describes, counted on the `meta` device (no memory used)."""
    return sum(p.numel() for p in meta_model(config, trust_remote_code=trust_remote_code).parameters())


def check_weight_shapes(root: Path, model: Any) -> None:
    """Refuse (one line naming the tensor, its file and both shapes) a weight whose shape
    differs from the one `model` (built from config.json on `meta`) has under that name. Tensors the
    model does not name (renamed or fused on load by transformers) are left to the loader."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    prefix = getattr(model, "base_model_prefix", "") or ""
    shards = sorted(root.glob("*.safetensors")) or sorted(root.glob("pytorch_model*.bin"))
    for shard in shards:
        shapes = safetensors_shapes(shard) if shard.suffix == ".safetensors" else _bin_shapes(shard)
        for name, shape in shapes.items():
            key = _model_key(name, expected, prefix)
            if key is not None and expected[key] != shape:
                raise InvalidInput(
                    f"{root}: tensor {name} in {shard.name} has shape {list(shape)} but config.json "
                    f"makes it {list(expected[key])}; the config does not match the weights"
                )


def _model_key(name: str, expected: dict[str, tuple[int, ...]], prefix: str) -> str | None:
    """`name` as the model calls it: as is, or with / without the base model's prefix (`model.`)."""
    candidates = [name]
    if prefix:
        candidates += [f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
    return next((c for c in candidates if c in expected), None)


_MAX_HEADER = 100 << 20


def _bin_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a `pytorch_model.bin`, loaded onto `meta` (no data read) with weights_only."""
    import torch

    try:
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception as exc:
        raise InvalidInput(f"{path}: cannot read its tensors safely: {first_line(exc)}") from exc
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors file's header (the weights are not read)."""
    header = _safetensors_header(path)
    try:
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (TypeError, KeyError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a safetensors file (its header lists no shapes)") from exc


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size <= _MAX_HEADER:
            raise InvalidInput(f"{path}: not a safetensors file (header size {size})")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"{path}: not a safetensors file (its header is not JSON)") from exc
    if not isinstance(header, dict):
        raise InvalidInput(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def tokenizer_files(root: Path) -> list[Path]:
    """The files that make up the tokenizer, sorted by name."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and (
            p.name in _TOKENIZER_NAMES
            or p.name.startswith(("tokenization_", "chat_template"))
            or p.suffix == ".tiktoken"
        )
    )


def tokenizer_sha256(root: Path) -> str:
    """sha256 over the names and contents of the tokenizer files, in sorted order."""
    h = hashlib.sha256()
    for path in tokenizer_files(root):
        h.update(f"{path.name}\x00{sha256_file(path)}\n".encode())
    return h.hexdigest()


def _dtype_name(config: Any, root: Path) -> str | None:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is not None:
        return str(dtype).removeprefix("torch.")
    for shard in sorted(root.glob("*.safetensors")):
        header = _safetensors_header(shard)
        for key, entry in header.items():
            if key != "__metadata__":
                return _SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"].lower())
    return None


def _check_trust(trust_remote_code: bool, revision: str | None) -> None:
    if trust_remote_code and not revision:
        raise InvalidInput("--trust-remote-code needs a pinned --revision (a commit of the model's code)")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
