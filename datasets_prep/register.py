"""Registering a raw file as a dataset version (the table access is catalog.datasets').

`add_dataset` reads the file once, streaming: each valid row becomes a canonical line in a
temporary file inside a store staging directory (bad rows go to the report). If the report
refuses the file, the staging directory is dropped and nothing else has happened. Otherwise a
second pass writes the seeded splits, `meta.json` is added, the directory is committed to the
store (content-addressed) and one `datasets` row is inserted. Canonical content identical to the
latest version of the name (same sha256) is recognised: no new version.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from catalog.datasets import insert_version
from catalog.db import Catalog
from catalog.errors import InvalidInput
from catalog.models import Dataset
from catalog.names import check_name
from catalog.store import ArtifactStore
from datasets_prep.canonical import META, split_file
from datasets_prep.formats import AUTO
from datasets_prep.formats.base import Format
from datasets_prep.reader import RawReader, Record
from datasets_prep.split import TEST, SplitValue, check_splits, split_counts, write_splits
from datasets_prep.validate import (
    FileResult,
    Leakage,
    Problem,
    Report,
    pick_format,
    refuse_if_invalid,
    valid_lines,
)

ARTIFACT_KIND = "datasets"
_ROWS_TMP = "rows.tmp"  # every valid row of the main file, before the split; never committed


@dataclass(frozen=True)
class AddResult:
    dataset: Dataset
    """The version registered, or the latest version when it already held this content."""
    created: bool
    """False when the content was identical to the latest version's (no new version)."""
    report: list[str]
    """This run's report: `FILE:LINE: CODE: message` for skipped rows and warnings."""
    shown: list[str] = field(default_factory=list)
    """What to print of it: errors first, counted per code, then warnings per code with examples."""
    format_note: str | None = None
    """For `--format auto`: which format it picked, from which keys."""


def add_dataset(
    catalog: Catalog,
    store: ArtifactStore,
    name: str,
    path: str | Path,
    fmt: str = AUTO,
    *,
    test_path: str | Path | None = None,
    splits: Mapping[str, SplitValue] | None = None,
    seed: int = 0,
    skip_invalid: bool = False,
    prompt_key: str | None = None,
    response_key: str | None = None,
    user: str,
) -> AddResult:
    """Validate, convert and split `path` (and `test_path`) and register them as `name`'s next version.

    `splits` maps split names to a row count or a fraction (`{"test": 100}`, `{"test": 0.1}`);
    the rest is `train`. `test_path` is a separate file (same format) used as the `test` split.
    Bad rows refuse the whole file (InvalidRows, listing them) unless `skip_invalid`; a `test_path`
    row whose prompt is a training row's is reported as `test-in-train` (kept). `prompt_key` and
    `response_key` name the fields of `--format columns`; `AddResult.format_note` says which format
    `auto` picked, from which keys.
    """
    check_name(name, "dataset name")
    source = _existing_file(path, "FILE")
    test = _existing_file(test_path, "--test") if test_path is not None else None
    wanted = check_splits(splits, test_file=test is not None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"--seed {seed!r}: expected an integer")
    form, note = pick_format(fmt, str(path), prompt_key, response_key)
    report = Report()
    train = Leakage(str(path)) if test is not None else None
    with store.staging() as stage:
        lines = array("L") if wanted else None  # the raw line of each valid row, to report --split groups
        files = [_convert(str(path), form, stage / _ROWS_TMP, set(), report, collect=train, lines=lines)]
        if test is not None:
            files.append(
                _convert(str(test_path), form, split_file(stage, TEST), set(), report, against=train)
            )
        refuse_if_invalid(report, files, form, skip_invalid, note="picked by --format auto" if note else None)
        counts = split_counts(wanted, files[0].rows, files[0].display)
        split = write_splits(stage / _ROWS_TMP, stage, counts, seed)
        counts = split.counts
        _report_kept_together(report, str(path), split.together, lines)
        if test is not None:
            counts[TEST] = files[1].rows
        meta = {"format": form.name, "counts": counts, "splits": wanted, "seed": seed if wanted else None}
        (stage / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        artifact = store.commit(stage, ARTIFACT_KIND)
    split_spec = {
        "seed": seed,
        "splits": wanted,
        "test_file": None if test is None else {"path": str(test.resolve()), "sha256": files[1].sha256},
    }
    dataset = Dataset(
        name=name,
        source_format=form.name,
        source_path=str(source.resolve()),
        source_sha256=files[0].sha256,
        artifact_uri=artifact.uri,
        sha256=artifact.sha256,
        split_counts=counts,
        split_spec=split_spec,
        invalid_count=report.errors,
        report=report.lines(),
        created_by=user,
    )
    dataset, created = insert_version(catalog, store, dataset, artifact)
    return AddResult(dataset, created, list(dataset.report), report.shown(), note)


def _existing_file(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"{flag} {path}: no such file")
    if not p.is_file():
        raise InvalidInput(f"{flag} {path}: not a regular file")
    return p


def _convert(
    display: str,
    form: Format,
    dest: Path,
    seen: set[bytes],
    report: Report,
    *,
    collect: Leakage | None = None,
    against: Leakage | None = None,
    lines: array | None = None,
) -> FileResult:
    """Write the canonical lines of `display`'s valid rows to `dest`; `lines` gets each one's raw line."""
    reader = _LineTracking(display)
    result = FileResult(display)
    with open(dest, "wb") as out:
        for line in valid_lines(reader, form, seen, report, result, collect=collect, against=against):
            out.write(line)
            if lines is not None:
                lines.append(reader.line)
    return result


class _LineTracking(RawReader):
    """A reader that remembers the line of the record it last gave out (valid_lines yields a row's
    canonical line before it reads the next record)."""

    line = 0

    def records(self) -> Iterator[Record]:
        for record in super().records():
            self.line = record.line
            yield record


def _report_kept_together(
    report: Report, display: str, together: list[tuple[list[int], str]], lines: array | None
) -> None:
    """One `split-kept-together` warning per group of rows that share a normalised prompt."""
    for group, split in together:
        at = [lines[i] if lines is not None else i + 1 for i in group]
        shown = ", ".join(str(n) for n in at[:5]) + (", ..." if len(at) > 5 else "")
        report.add(
            Problem(
                display, at[0], "split-kept-together",
                f"{len(group)} rows share this prompt (lines {shown}): all in {split}, none in another split",
            )
        )  # fmt: skip
