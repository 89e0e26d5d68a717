"""Where a registered base model's files are on this machine, and its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog.base_models import local_dir
from catalog.errors import NotFound
from catalog.models import BaseModel
from catalog.store import ArtifactStore
from worker.models.loading import load_tokenizer


def model_dir(store: ArtifactStore, base_model: BaseModel) -> Path:
    """The absolute directory to load `base_model` from: its own directory, its imported copy in the
    store, or (a hub id) its snapshot in this machine's hub cache."""
    root = local_dir(store, base_model)
    if root is None:
        return _hub_snapshot(base_model)
    if base_model.source == "gguf" and not store.exists(base_model.uri):
        raise NotFound(
            f"base model {base_model.name}: {base_model.uri} is missing from the store at {store.root}"
        )
    if not (root / "config.json").is_file():
        raise NotFound(f"base model {base_model.name}: {root} is gone (moved or deleted?)")
    return root


def _hub_snapshot(base_model: BaseModel) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base_model.uri, revision=base_model.revision, local_files_only=True))
    except Exception as exc:  # any miss in the offline cache
        raise NotFound(
            f"base model {base_model.name} is the hub id {base_model.uri}, which is not in this machine's "
            "hub cache and cannot be downloaded offline: register a local copy with `ft models add --path`"
        ) from exc


def tokenizer_of(store: ArtifactStore, base_model: BaseModel, *, padding_side: str = "right") -> Any:
    """The base model's tokenizer (worker.models.loading.load_tokenizer: the pad token falls back to
    EOS), with custom code only if the model was registered with --trust-remote-code."""
    return load_tokenizer(
        model_dir(store, base_model),
        trust_remote_code=base_model.trust_remote_code,
        padding_side=padding_side,
    )
