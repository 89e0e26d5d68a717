"""What a source format is, and the field checks every format converter shares.

A format is a name, the keys that let `auto` recognise it, and one function from a raw JSON object
to a canonical `Row`. A converter raises `RowError` with a validation code for a bad row; it
ignores keys it does not know (ids, metadata), as the communities' files carry plenty of those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets_prep.reader import RowError
from datasets_prep.rows import Row


@dataclass(frozen=True)
class Format:
    name: str
    """The `--format` value."""
    shape: str
    """What a row looks like, for help texts and for error messages about missing fields."""
    claims: Callable[[frozenset[str]], bool]
    """Whether `--format auto` may pick this format for a first object with these keys."""
    convert: Callable[[dict[str, Any]], Row]
    """A raw JSON object -> a canonical row; raises `RowError` for a bad row."""


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def text(obj: dict[str, Any], key: str, *, allow_empty: bool = False, label: str | None = None) -> str:
    """The string at `obj[key]`; `missing-field`, `wrong-type` or `empty-field` otherwise."""
    label = label or repr(key)
    if key not in obj:
        raise RowError("missing-field", f"no field {label}")
    return _string(obj[key], label, allow_empty)


MAX_REFERENCES = 16
"""The most references one row's output may list (more is almost surely a mistaken field)."""


def output_text(obj: dict[str, Any], key: str, *, allow_empty: bool = False) -> tuple[str, tuple[str, ...]]:
    """The output at `obj[key]` and its references: a string gives `(s, ())`; a list of 1 to
    `MAX_REFERENCES` strings (a multi-reference test set) gives `(first, all)`: training uses the first,
    metrics score against all."""
    if key not in obj:
        raise RowError("missing-field", f"no field {key!r}")
    value = obj[key]
    if not isinstance(value, list):
        return _string(value, repr(key), allow_empty), ()
    if not 1 <= len(value) <= MAX_REFERENCES:
        found = "an empty list" if not value else f"a list of {len(value)}"
        raise RowError(
            "wrong-type",
            f"field {key!r} must be a string or a list of 1-{MAX_REFERENCES} strings, found {found}",
        )
    refs = tuple(_string(v, repr(f"{key}[{i}]"), allow_empty) for i, v in enumerate(value))
    return refs[0], refs if len(refs) > 1 else ()


def optional_text(obj: dict[str, Any], key: str) -> str | None:
    """The string at `obj[key]` (may be empty), or None when the key is absent or null."""
    if obj.get(key) is None:
        return None
    return _string(obj[key], repr(key), allow_empty=True)


def _string(value: Any, label: str, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise RowError("wrong-type", f"field {label} must be a string, found {json_type(value)}")
    if not allow_empty and not value.strip():
        raise RowError("empty-field", f"field {label} is empty")
    return value
