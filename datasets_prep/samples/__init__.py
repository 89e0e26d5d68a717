"""Small data sets shipped with the package (e.g. `faults_sample` for `ft quickstart`)."""

from __future__ import annotations

from pathlib import Path

from catalog.errors import InvalidInput

_HERE = Path(__file__).resolve().parent


def sample_path(name: str) -> Path:
    """The packaged `<name>.jsonl`; InvalidInput naming the shipped samples if there is none."""
    path = _HERE / f"{name}.jsonl"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(sorted(p.stem for p in _HERE.glob("*.jsonl"))) or "none"
        raise InvalidInput(f"no sample data set {name!r}; shipped samples: {known}")
    return path
