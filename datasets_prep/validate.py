"""Validation of raw rows on their way to canonical rows, and the report it writes.

Every bad row becomes one report line, `FILE:LINE: CODE: message`, with one of `CODES`. Errors
refuse the file unless the caller skips invalid rows; `WARNINGS` do not: the row is a valid
example and is kept (the reference ADGEN dev set itself has one exact duplicate), but the report
names it. `duplicate-row` is a repeat within the files read in one pass, `test-in-train` a test-file
row whose prompt is also a training row's (leakage). What is shown leads with the errors, counted per
code with the first of each, then the warnings counted per code with a few examples
(`Report.shown`). Memory stays flat: 16-byte row digests, and at most `MAX_KEPT` report lines (the
rest are counted).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

from catalog.errors import InvalidInput
from datasets_prep.formats import AUTO, columns, describe, detect, get_format
from datasets_prep.formats.base import Format, json_type
from datasets_prep.reader import RawReader, Record, RowError
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
    "test-in-train": "a --test row whose prompt is a training row's (a warning: leakage, the row is kept)",
    "split-kept-together": "rows sharing a prompt, all put in one --split part (a warning: no leakage)",
}
WARNINGS = frozenset({"duplicate-row", "test-in-train", "split-kept-together"})
EXAMPLES = 3
"""Example lines shown for each warning code."""
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


_LINE = re.compile(r"^(.*):(\d+): ([a-z0-9-]+): (.*)$")


@dataclass
class Report:
    """The problems of one registration (all its files), in the order they were found."""

    kept: list[Problem] = field(default_factory=list)
    errors: int = 0
    warnings: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Problems per (file, code), every one counted (`kept` stops at MAX_KEPT)."""
    firsts: dict[tuple[str, str], list[Problem]] = field(default_factory=dict)
    """The first EXAMPLES problems of each (file, code)."""

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
        key = (problem.file, problem.code)
        self.counts[key] += 1
        examples = self.firsts.setdefault(key, [])
        if len(examples) < EXAMPLES:
            examples.append(problem)

    @classmethod
    def from_lines(cls, lines: list[str]) -> Report:
        """A report rebuilt from stored report lines (counts stop where the stored lines did)."""
        report = cls()
        for line in lines:
            if m := _LINE.match(line):
                report.add(Problem(m[1], int(m[2]), m[3], m[4]))
        return report

    def lines(self, limit: int = MAX_KEPT) -> list[str]:
        """At most `limit` lines, then `... and N more` for the problems not shown."""
        return shorten([str(p) for p in self.kept], limit, self.total)

    def per_code(self, *, warnings: bool, file: str | None = None) -> Counter[str]:
        """Errors (or warnings) per code, in the order the codes were first met."""
        found: Counter[str] = Counter()
        for (f, code), n in self.counts.items():
            if (code in WARNINGS) == warnings and file in (None, f):
                found[code] += n
        return found

    def error_counts(self, file: str | None = None) -> str:
        """`wrong-type 20 (first: test.json:3: field 'output' ...), invalid-json 1 (first: ...)`."""
        parts = []
        for code, n in self.per_code(warnings=False, file=file).items():
            first = next(
                p for (f, c), ps in self.firsts.items() if c == code and file in (None, f) for p in ps
            )
            parts.append(f"{code} {n} (first: {first.file}:{first.line}: {first.message})")
        return ", ".join(parts)

    def warning_counts(self) -> str:
        """`duplicate-row 50, test-in-train 5`."""
        return ", ".join(f"{code} {n}" for code, n in self.per_code(warnings=True).items())

    def shown(self, limit: int = MAX_SHOWN) -> list[str]:
        """What is printed: the error lines first (at most `limit`, a file's invalid-utf8 lines said once),
        then one line counting the warnings per code and up to EXAMPLES lines of each."""
        lines: list[str] = []
        said_utf8: set[str] = set()
        for p in self.kept:
            if p.code in WARNINGS:
                continue
            n = self.counts[(p.file, p.code)]
            if p.code == "invalid-utf8" and n > 1:
                if p.file in said_utf8:
                    continue
                said_utf8.add(p.file)
                first = p.message.split(";")[0]
                lines.append(
                    f"{p.file}:{p.line}: invalid-utf8: not UTF-8: re-save as UTF-8 ({n} lines; {first})"
                )
                continue
            lines.append(str(p))
        utf8_folded = sum(self.counts[(f, "invalid-utf8")] - 1 for f in said_utf8)
        shown = shorten(lines, limit, self.errors - utf8_folded) if self.errors else []
        if self.warnings:
            shown.append(
                f"{self.warnings} warning{_s(self.warnings)} (the rows are kept): {self.warning_counts()}"
            )
            for code, n in self.per_code(warnings=True).items():
                examples = [p for (_, c), ps in self.firsts.items() if c == code for p in ps][:EXAMPLES]
                shown.extend(str(p) for p in examples)
                if n > len(examples):
                    shown.append(f"{_MORE}{n - len(examples)} more {code}")
        return shown


def _s(n: int) -> str:
    return "s" if n != 1 else ""


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


def resolve_format(
    name: str, path: str, prompt_key: str | None = None, response_key: str | None = None
) -> Format:
    """`--format NAME`, or for `auto` the format the keys of the file's first JSON object fit."""
    return pick_format(name, path, prompt_key, response_key)[0]


def pick_format(
    name: str, path: str, prompt_key: str | None = None, response_key: str | None = None
) -> tuple[Format, str | None]:
    """The format and, for `auto`, the line saying which one it picked from which keys."""
    if name == columns.NAME:
        return columns.make(prompt_key, response_key), None
    if prompt_key is not None or response_key is not None:
        raise InvalidInput(f"--prompt-key and --response-key go with --format columns, not --format {name}")
    if name != AUTO:
        return get_format(name), None
    records = RawReader(path).records()
    not_utf8: list[Record] = []
    try:
        for record in records:
            if isinstance(record.value, dict):
                where = f"{path}:{record.line}"
                fmt = detect(record.value.keys(), where)
                return fmt, describe(fmt, record.value.keys(), where)
            if record.error is not None and record.error.code == "invalid-utf8":
                not_utf8.append(record)
    finally:
        records.close()
    if not_utf8:
        first = not_utf8[0]
        raise InvalidInput(
            f"{path} is not UTF-8: re-save as UTF-8 ({len(not_utf8)} line{_s(len(not_utf8))} not UTF-8 "
            f"text; first at line {first.line}: {first.error.message.split(';')[0]})"
        )
    raise InvalidInput(f"--format auto: {path} holds no JSON object to tell the format from; pass --format")


@dataclass
class Leakage:
    """Prompt digests of the training file, and where each was first seen, to flag test rows."""

    train_file: str = ""
    prompts: MutableMapping[bytes, int] = field(default_factory=dict)


def valid_lines(
    reader: RawReader,
    fmt: Format,
    seen: set[bytes],
    report: Report,
    result: FileResult,
    *,
    collect: Leakage | None = None,
    against: Leakage | None = None,
) -> Iterator[bytes]:
    """Stream the canonical lines of the file's valid rows; bad rows go to `report`.

    `seen` holds the digests of the rows already accepted (a repeat is `duplicate-row`). The prompts
    of the rows go into `collect` (the training file's pass); a row whose prompt is in `against` (the
    test file's pass) is `test-in-train` instead. `result` is complete once the iterator is.
    """
    for record in reader.records():
        try:
            if record.error is not None:
                raise record.error
            if not isinstance(record.value, dict):
                raise RowError("not-object", f"expected a JSON object, found {json_type(record.value)}")
            row = fmt.convert(record.value)
            line = _encode(row)
        except RowError as exc:
            message = exc.message
            if exc.code == "missing-field":
                message += f" ({fmt.name} rows look like {fmt.shape})"
            report.add(Problem(reader.display, record.line, exc.code, message))
            continue
        digest = _digest(line)
        if collect is not None or against is not None:
            prompt = _digest(json.dumps(_prompt(row), ensure_ascii=False, sort_keys=True).encode())
            if collect is not None:
                collect.prompts.setdefault(prompt, record.line)
            if against is not None and prompt in against.prompts:
                where = f"{against.train_file}:{against.prompts[prompt]}"
                report.add(
                    Problem(reader.display, record.line, "test-in-train", f"same prompt as {where} (kept)")
                )
                digest = b""  # reported once, as leakage
        if digest and digest in seen:
            report.add(
                Problem(reader.display, record.line, "duplicate-row", "same row as an earlier one (kept)")
            )
        seen.add(digest)
        result.rows += 1
        yield line
    result.sha256 = reader.sha256


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _prompt(row: Row) -> dict:
    data = row.to_json()
    data.pop("output")
    data.pop("references", None)
    return data


def _encode(row: Row) -> bytes:
    try:
        return canonical_line(row)
    except UnicodeEncodeError as exc:  # a lone surrogate from a \udXXX escape: not text
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        message = f"the escape {bad} is half a surrogate pair, not a character"
        raise RowError("invalid-utf8", message) from None


def refuse_if_invalid(
    report: Report, files: list[FileResult], fmt: Format, skip_invalid: bool, note: str | None = None
) -> None:
    """Raise `InvalidRows` when a row is bad (unless skipped) or when a file has no valid row.

    The message's first line counts the errors per code with the first of each; `note` says how
    `auto` picked the format."""
    read_as = f"read as --format {fmt.name}" + (f", {note}" if note else "")
    for f in files:
        if (
            f.rows == 0
            and report.counts[(f.display, "invalid-utf8")]
            == report.per_code(warnings=False, file=f.display).total()
            > 0
        ):
            n = report.counts[(f.display, "invalid-utf8")]
            first = report.firsts[(f.display, "invalid-utf8")][0]
            raise InvalidRows(
                f"{f.display} is not UTF-8: re-save as UTF-8 ({n} line{_s(n)} not UTF-8 text; first at line "
                f"{first.line}: {first.message.split(';')[0]}); nothing was registered",
                [],
            )
    names = " and ".join(f.display for f in files)
    if report.errors and not skip_invalid:
        valid = sum(f.rows for f in files)
        raise InvalidRows(
            f"{report.errors} invalid row{_s(report.errors)} in {names} ({read_as}): "
            f"{report.error_counts()}; nothing was registered. Fix them, or pass --skip-invalid to "
            f"register the {valid} valid rows",
            report.shown(MAX_SHOWN),
        )
    for f in files:
        if f.rows == 0:
            why = report.error_counts(f.display) or "it holds no rows"
            raise InvalidRows(
                f"{f.display} has no valid rows ({read_as}): {why}; nothing was registered",
                report.shown(MAX_SHOWN),
            )
