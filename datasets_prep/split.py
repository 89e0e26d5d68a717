"""Named splits: `--split NAME=COUNT|FRACTION` parsed and checked, row indices chosen, files written.

The choice depends on the rows and the seed alone (`random.Random(seed).sample` over the row
indices), so the same file and seed give the same rows on every run and machine. Rows not chosen
for a named split are `train`. A streaming pass over the canonical rows writes each one to its split
file, in file order.

Rows whose prompts are the same once normalised (`prompt_key`: NFKC, case-folded, whitespace
collapsed) are kept together in one split, so that no prompt is both trained on and tested: the
seeded draw is then over groups of rows instead of rows (a group that would overfill a split is left
for the next). Without such repeats the draw is the plain one over rows, as before. Only a 16-byte
digest per row is held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import unicodedata
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
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


_SPACE = re.compile(r"\s+")
PROMPT_FIELDS = ("system", "instruction", "input", "history")
"""The parts of a canonical row that make its prompt (not `output` / `references`)."""


def normalise(text: str) -> str:
    """NFKC, case-folded, runs of whitespace made one space, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_key(line: bytes) -> bytes:
    """A 16-byte digest of a canonical line's prompt, normalised: rows that a model would see as the
    same question get the same key whatever their outputs."""
    data = json.loads(line)
    history = [[normalise(turn) for turn in pair] for pair in data.get("history") or []]
    parts = [normalise(data.get(name) or "") for name in PROMPT_FIELDS if name != "history"]
    text = json.dumps([*parts, history], ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def prompt_groups(rows_file: Path) -> list[list[int]]:
    """The row indices of `rows_file` grouped by `prompt_key`, each group in file order, the groups in
    the order of their first row."""
    index: dict[bytes, int] = {}
    groups: list[list[int]] = []
    with open(rows_file, "rb") as f:
        for i, line in enumerate(f):
            key = prompt_key(line)
            if key in index:
                groups[index[key]].append(i)
            else:
                index[key] = len(groups)
                groups.append([i])
    return groups


def assign_groups(groups: list[list[int]], counts: Mapping[str, int], seed: int) -> dict[int, str]:
    """Row index -> split name, a group of rows always in one split. The groups are drawn in a seeded
    order and each named split (by name) takes the next groups that still fit its count; a split that
    no group fits takes the next one whole rather than stay empty. The counts may then differ from
    `counts` by the size of a group; `train` must keep at least one row."""
    named = [(name, count) for name, count in sorted(counts.items()) if name != TRAIN]
    order = random.Random(seed).sample(range(len(groups)), len(groups))
    taken = [False] * len(groups)
    where: dict[int, str] = {}
    for name, wanted in named:
        left = wanted
        for g in order:
            if left == 0:
                break
            if not taken[g] and len(groups[g]) <= left:
                taken[g], left = True, left - len(groups[g])
                where.update(dict.fromkeys(groups[g], name))
        if left == wanted:  # every group left is larger than the split: take one whole
            g = next((g for g in order if not taken[g]), None)
            if g is not None:
                taken[g] = True
                where.update(dict.fromkeys(groups[g], name))
    if len(where) == sum(len(g) for g in groups):
        asked = ", ".join(f"{n}={c}" for n, c in named)
        raise InvalidInput(
            f"--split {asked}: keeping rows with the same prompt together leaves no row for train; "
            "ask for fewer rows"
        )
    return where


@dataclass
class Split:
    """What `write_splits` did."""

    counts: dict[str, int]
    """Rows per split as written (`train` first)."""
    together: list[tuple[list[int], str]] = field(default_factory=list)
    """Each group of 2+ rows (indices into the rows file) sharing a normalised prompt, and its split."""


def write_splits(rows_file: Path, out_dir: Path, counts: Mapping[str, int], seed: int) -> Split:
    """Move each line of `rows_file` (canonical rows) to `<split>.jsonl` in `out_dir`, rows that share
    a normalised prompt into the same split; returns the counts written and those groups."""
    if set(counts) == {TRAIN}:
        os.replace(rows_file, split_file(out_dir, TRAIN))
        return Split(dict(counts))
    groups = prompt_groups(rows_file)
    repeated = [g for g in groups if len(g) > 1]
    if repeated:
        where = assign_groups(groups, counts, seed)
    else:
        where = assign(sum(counts.values()), counts, seed)
    written = dict.fromkeys(counts, 0)
    with ExitStack() as stack:
        outs = {name: stack.enter_context(open(split_file(out_dir, name), "wb")) for name in counts}
        rows = stack.enter_context(open(rows_file, "rb"))
        for index, line in enumerate(rows):
            name = where.get(index, TRAIN)
            outs[name].write(line)
            written[name] += 1
    rows_file.unlink()
    together = [(g, where.get(g[0], TRAIN)) for g in repeated]
    return Split({TRAIN: written.pop(TRAIN), **written}, together)
