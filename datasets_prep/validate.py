"""Validation of raw rows on their way to canonical rows, and the report it writes.

Every bad row becomes one report line, `FILE:LINE: CODE: message`, with one of `CODES`. Errors
refuse the file unless the caller skips invalid rows; `duplicate-row` is a warning: the row is a
valid example and is kept (the reference ADGEN dev set itself has one exact duplicate), but the
report names it. Memory stays flat: a set of 16-byte row digests for duplicates, and at most
`MAX_KEPT` report lines (the rest are counted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from catalog.errors import InvalidInput
from datasets_prep.formats import AUTO, detect, get_format
from datasets_prep.formats.base import Format, json_type
from datasets_prep.reader import RawReader, RowError
from datasets_prep.rows import Row

CODES: dict[str, str] = {
    "invalid-json": "the line (or array element) is not valid JSON",
    "not-object": "the JSON value is not an object",
    "missing-field": "a field the format requires is absent",
    "empty-field": "a required text field is empty or blank",
    "wrong-type": "a field has the wrong JSON type",
    "invalid-utf8": "the bytes are not UTF-8 text",
    "bad-turns": "a conversation's roles are unknown or out of order (sharegpt)",
    "duplicate-row": "the same canonical row as an earlier one (a warning: the row is kept)",
}
WARNINGS = frozenset({"duplicate-row"})
MAX_SHOWN = 50
"""Report lines printed with an error; the rest are summed up as `... and N more`."""
MAX_KEPT = 1000
"""Report lines kept in memory and stored with a dataset."""
_MORE = "... and "


class InvalidRows(InvalidInput):
    """A file refused by validation; `report` holds the report lines shown with the message."""

    def __init__(self, summary: str, report: list[str]):
        super().__init__("\n".join([summary + (":" if report else ""), *report]))
        self.summary = summary
        self.report = report


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.code}: {self.message}"


@dataclass
class Report:
    """The problems of one registration (all its files), in the order they were found."""

    kept: list[Problem] = field(default_factory=list)
    errors: int = 0
    warnings: int = 0

    @property
    def total(self) -> int:
        return self.errors + self.warnings

    def add(self, problem: Problem) -> None:
        if problem.code in WARNINGS:
            self.warnings += 1
        else:
            self.errors += 1
        if len(self.kept) < MAX_KEPT:
            self.kept.append(problem)

    def lines(self, limit: int = MAX_KEPT) -> list[str]:
        """At most `limit` lines, then `... and N more` for the problems not shown."""
        return shorten([str(p) for p in self.kept], limit, self.total)


def shorten(lines: list[str], limit: int = MAX_SHOWN, total: int | None = None) -> list[str]:
    """The first `limit` report lines and `... and N more`; `total` counts every problem (default:
    the lines, reading a stored report's own `... and N more` tail)."""
    if total is None:
        total = len(lines)
        if lines and lines[-1].startswith(_MORE):
            total += int(lines[-1][len(_MORE) :].split()[0]) - 1
            lines = lines[:-1]
    shown = lines[:limit]
    if total > len(shown):
        shown.append(f"{_MORE}{total - len(shown)} more")
    return shown


@dataclass
class FileResult:
    """What one pass over a raw file found."""

    display: str
    rows: int = 0
    sha256: str = ""


def canonical_line(row: Row) -> bytes:
    """A row as one line of a canonical split file (the bytes `canonical.write_rows` writes)."""
    return (json.dumps(row.to_json(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def resolve_format(name: str, path: str) -> Format:
    """`--format NAME`, or for `auto` the format the keys of the file's first JSON object fit."""
    if name != AUTO:
        return get_format(name)
    records = RawReader(path).records()
    try:
        for record in records:
            if isinstance(record.value, dict):
                return detect(record.value.keys(), f"{path}:{record.line}")
    finally:
        records.close()
    raise InvalidInput(f"--format auto: {path} holds no JSON object to tell the format from; pass --format")


def valid_lines(
    reader: RawReader, fmt: Format, seen: set[bytes], report: Report, result: FileResult
) -> Iterator[bytes]:
    """Stream the canonical lines of the file's valid rows; bad rows go to `report`.

    `seen` holds the digests of the rows already accepted (across files, so that a test row that
    repeats a training row is reported too). `result` is complete once the iterator is.
    """
    for record in reader.records():
        try:
            if record.error is not None:
                raise record.error
            if not isinstance(record.value, dict):
                raise RowError("not-object", f"expected a JSON object, found {json_type(record.value)}")
            line = _encode(fmt.convert(record.value))
        except RowError as exc:
            message = exc.message
            if exc.code == "missing-field":
                message += f" ({fmt.name} rows look like {fmt.shape})"
            report.add(Problem(reader.display, record.line, exc.code, message))
            continue
        digest = hashlib.blake2b(line, digest_size=16).digest()
        if digest in seen:
            report.add(
                Problem(reader.display, record.line, "duplicate-row", "same row as an earlier one (kept)")
            )
        seen.add(digest)
        result.rows += 1
        yield line
    result.sha256 = reader.sha256


def _encode(row: Row) -> bytes:
    try:
        return canonical_line(row)
    except UnicodeEncodeError as exc:  # a lone surrogate from a \udXXX escape: not text
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        message = f"the escape {bad} is half a surrogate pair, not a character"
        raise RowError("invalid-utf8", message) from None


def refuse_if_invalid(report: Report, files: list[FileResult], fmt: Format, skip_invalid: bool) -> None:
    """Raise `InvalidRows` when a row is bad (unless skipped) or when a file has no valid row."""
    names = " and ".join(f.display for f in files)
    if report.errors and not skip_invalid:
        valid = sum(f.rows for f in files)
        raise InvalidRows(
            f"{report.errors} invalid row{'s' if report.errors != 1 else ''} in {names} "
            f"(read as --format {fmt.name}); nothing was registered. Fix them, or pass --skip-invalid "
            f"to register the {valid} valid rows",
            report.lines(MAX_SHOWN),
        )
    for f in files:
        if f.rows == 0:
            raise InvalidRows(
                f"{f.display} has no valid rows (read as --format {fmt.name}); nothing was registered",
                report.lines(MAX_SHOWN),
            )
