"""The resolved spec of a conversion (`ConvertSpec`, the `convert` job's JSON and the `data` of a training
job), its cache key, and the strict reading of spec JSON that every job kind shares (no heavy imports:
the CLI derives flags from these fields)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from catalog.errors import InvalidInput
from datasets_prep.lengths import DEFAULT_MAX_LEN

FORMAT_VERSION = 1
"""Bump when the bytes a conversion writes change for the same inputs (invalidates the cache)."""
MAX_LEN_LIMIT = 1 << 20

T = TypeVar("T")


def strict_from_json(cls: type[T], data: Any, *, what: str) -> T:
    """The dataclass `cls` from its JSON form, nested dataclasses included: an unknown key, a missing
    one or a value of the wrong type is an InvalidInput naming the field (a spec written by another ft
    version, or edited by hand, is refused rather than half-read). ints are accepted for floats and
    lists for tuples, as JSON writes them; the dataclasses' own checks then run."""
    import dacite

    def as_float(value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def as_tuple(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    config = dacite.Config(strict=True, type_hooks={float: as_float, tuple[str, ...]: as_tuple})
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object, not {type(data).__name__}")
    try:
        return dacite.from_dict(cls, data, config=config)
    except dacite.DaciteError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


@dataclass
class ConvertSpec:
    """A resolved conversion request; the `convert` job's spec JSON is this, serialised."""

    dataset_id: int
    """The dataset version (datasets.id)."""
    template_id: int
    """The template version (prompt_templates.id)."""
    base_model_id: int
    """The base model whose tokenizer is used (base_models.id)."""
    max_len: int = DEFAULT_MAX_LEN
    """Most tokens in one example (prompt + output); longer outputs are cut."""
    max_source_len: int | None = None
    """Most prompt tokens kept (its start); by default 3/4 of --max-len. (None in a spec: no limit but
    --max-len; specs resolved at submit always hold a number.)"""
    dataset_ref: str = ""
    """Display: `name:version` of the dataset."""
    template_ref: str = ""
    """Display: `name:version` of the template."""
    model_name: str = ""
    """Display: the base model's name."""
    tokenizer_sha256: str = ""
    """The tokenizer's identity, part of the cache key."""
    cache_key: str = ""
    """sha256 over everything that determines the content (see `conversion_cache_key`)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int):
            raise InvalidInput(f"--max-len must be a whole number, got {self.max_len!r}")
        if not 2 <= self.max_len <= MAX_LEN_LIMIT:
            raise InvalidInput(f"--max-len must be between 2 and {MAX_LEN_LIMIT}, got {self.max_len}")
        if self.max_source_len is not None:
            if isinstance(self.max_source_len, bool) or not isinstance(self.max_source_len, int):
                raise InvalidInput(f"--max-source-len must be a whole number, got {self.max_source_len!r}")
            if not 1 <= self.max_source_len < self.max_len:
                raise InvalidInput(
                    f"--max-source-len must be at least 1 and less than --max-len ({self.max_len}) so that "
                    f"output tokens fit, got {self.max_source_len}"
                )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConvertSpec:
        """Rebuild from `to_json()`; an unknown key or a value of the wrong type names the field."""
        return strict_from_json(cls, data, what="conversion spec")


def conversion_cache_key(
    dataset_sha256: str, template_sha256: str, tokenizer_sha256: str, max_len: int, max_source_len: int | None
) -> str:
    parts = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset_sha256,
        "template": template_sha256,
        "tokenizer": tokenizer_sha256,
        "max_len": max_len,
        "max_source_len": max_source_len,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
