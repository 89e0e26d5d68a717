"""Named splits: `--split NAME=COUNT|FRACTION` parsed and checked, row indices chosen, files written.

The choice depends on the row count and the seed alone (`random.Random(seed).sample` over the
row indices), so the same file and seed give the same rows on every run and machine. Rows not
chosen for a named split are `train`. A second streaming pass over the canonical rows writes
each one to its split file, in file order; only the chosen indices are held in memory.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

from catalog.errors import InvalidInput
from catalog.names import check_name
from datasets_prep.canonical import split_file

TRAIN = "train"
TEST = "test"

SplitValue = int | float
"""A row count (int >= 1) or a fraction of the rows (float in (0, 1))."""


def parse_split(text: str) -> tuple[str, SplitValue]:
    """`test=50` -> ("test", 50); `test=0.1` -> ("test", 0.1)."""
    name, sep, value = text.partition("=")
    number: SplitValue
    try:
        number = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
    if not sep or not name or number == -1.0:
        raise InvalidInput(f"--split {text}: expected NAME=COUNT or NAME=FRACTION, e.g. test=50 or test=0.1")
    return name, number


def _flag(name: str, value: SplitValue) -> str:
    return f"--split {name}={value}"


def check_splits(splits: Mapping[str, SplitValue] | None, *, test_file: bool) -> dict[str, SplitValue]:
    """Refuse impossible split requests before any file is read; returns them sorted by name."""
    splits = dict(splits or {})
    for name, value in splits.items():
        flag = _flag(name, value)
        if name == TRAIN:
            raise InvalidInput(f"{flag}: train is what the other splits leave; name only the others")
        check_name(name, f"split name in {flag}")
        if name == TEST and test_file:
            raise InvalidInput(f"--test FILE and {flag} both define the test split; use one of them")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{flag}: expected a row count or a fraction")
        if isinstance(value, int) and value < 1:
            raise InvalidInput(f"{flag}: a row count must be at least 1")
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise InvalidInput(
                f"{flag}: a fraction must be between 0 and 1 (exclusive); use a whole number for a row count"
            )
    return dict(sorted(splits.items()))


def split_counts(splits: Mapping[str, SplitValue], rows: int, source: str) -> dict[str, int]:
    """Rows per split for `rows` valid rows: `train` first, then the named splits by name."""
    named: dict[str, int] = {}
    for name, value in sorted(splits.items()):
        count = value if isinstance(value, int) else int(value * rows + 0.5)
        if count == 0:
            raise InvalidInput(f"{_flag(name, value)} selects no row of the {rows} valid rows in {source}")
        named[name] = count
    if sum(named.values()) >= rows:
        asked = " ".join(_flag(n, v) for n, v in sorted(splits.items()))
        raise InvalidInput(
            f"{asked}: asks for {sum(named.values())} rows but {source} has {rows} valid rows; "
            "leave at least one for train"
        )
    return {TRAIN: rows - sum(named.values()), **named}


def assign(rows: int, counts: Mapping[str, int], seed: int) -> dict[int, str]:
    """Row index -> split name for the rows of the named splits (all others are train)."""
    named = [(name, count) for name, count in sorted(counts.items()) if name != TRAIN]
    picked = random.Random(seed).sample(range(rows), sum(count for _, count in named))
    where: dict[int, str] = {}
    start = 0
    for name, count in named:
        for index in picked[start : start + count]:
            where[index] = name
        start += count
    return where


def write_splits(rows_file: Path, out_dir: Path, counts: Mapping[str, int], seed: int) -> None:
    """Move each line of `rows_file` (canonical rows) to `<split>.jsonl` in `out_dir`."""
    if set(counts) == {TRAIN}:
        os.replace(rows_file, split_file(out_dir, TRAIN))
        return
    where = assign(sum(counts.values()), counts, seed)
    with ExitStack() as stack:
        outs = {name: stack.enter_context(open(split_file(out_dir, name), "wb")) for name in counts}
        rows = stack.enter_context(open(rows_file, "rb"))
        for index, line in enumerate(rows):
            outs[where.get(index, TRAIN)].write(line)
    rows_file.unlink()
